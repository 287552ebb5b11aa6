"""The schema of a curation run (``launch/curate.py``). Field comments are the configuration reference.

Numbers come from the StarCoder2 / The Stack v2 processing (docs/recipe.md) unless the
comment says otherwise; where the recipe is silent the default is ours and the comment says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from arctic_pretrain.common import executor
from arctic_pretrain.common.config import ConfigError, require, to_object
from arctic_pretrain.common.config import register as register_schema
from arctic_pretrain.data.grouping import GroupConfig
from arctic_pretrain.data.languages import DEFAULT_LANGUAGES, LANGUAGES
from arctic_pretrain.data.tokenizer import TokenizeConfig
from arctic_pretrain.text.decontamination import BenchmarkConfig, DecontamConfig
from arctic_pretrain.text.dedup import DedupConfig

__all__ = ["BenchmarkConfig", "ConfigError", "DecontamConfig", "DedupConfig", "GroupConfig", "TokenizeConfig"]



@dataclass
class FetchConfig:
    """Contents of records that hold a blob id and no content (The Stack v2 and its per-repository `-ids`
    sets), fetched from an S3-compatible store. Defaults: Software Heritage's bucket, as The Stack v2's
    dataset card downloads it. Credentials, endpoint and profile not given here come from boto3's usual
    chain (AWS_ACCESS_KEY_ID/..., AWS_PROFILE, ~/.aws, AWS_ENDPOINT_URL, instance roles)."""

    enabled: bool = True  # false: a dataset of blob ids fails at once instead of being fetched
    blob_field: str = "blob_id"  # a record with this field and no read.content_field is fetched
    files_field: str = "files"  # the-stack-v2-train-*-ids: one row per repository, its files in this list
    encoding_field: str = "src_encoding"  # the blob's text encoding (The Stack v2); absent: UTF-8
    size_field: str = "length_bytes"  # used when present: files above read.max_file_bytes are not fetched
    endpoint_url: str | None = None  # None: boto3's (AWS_ENDPOINT_URL, else AWS S3)
    bucket: str = "softwareheritage"
    key_template: str = "content/{blob_id}"
    compression: str = "gzip"  # gzip | none: how blobs are stored (Software Heritage: gzip)
    unsigned: bool = False  # anonymous requests (a public bucket, no credentials needed)
    profile: str | None = None  # None: AWS_PROFILE, else the default profile
    region: str | None = None  # None: the profile's / AWS_DEFAULT_REGION, else us-east-1
    threads: int = 32  # concurrent requests per read task (ours: S3 latency, not bandwidth, bounds one stream)
    retries: int = 5  # per blob: botocore's standard retry mode (throttling, 5xx, connection errors) + body reads
    timeout_s: float = 60.0  # connect and read timeout of one request
    fail_after: int = 100  # a task whose first N fetches all fail stops, naming the reasons (a wrong bucket,
    # endpoint, key template or credentials), instead of counting every blob of the corpus as failed


@dataclass
class ReadConfig:
    """How raw inputs become one document per file."""

    # A repository is the first path component under an input folder (depth 1), or the first regex
    # group of repo_pattern matched against the path relative to the input folder.
    repo_depth: int = 1
    repo_pattern: str | None = None
    languages: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))  # the paper's 18 + markdown/json/yaml
    max_file_bytes: int = 1_000_000  # not in the recipe: The Stack dropped files above 1 MB; larger files are skipped, counted
    content_field: str = "content"  # JSONL/Parquet/HF field names (The Stack v2 / StarCoder data use these)
    path_field: str = "path"
    repo_field: str = "repo"
    language_field: str = "language"  # optional: used when present, else the path's extension decides
    hf_split: str = "train"  # split of `hf:<name>` inputs
    hf_config: str | None = None  # the dataset's configuration (load_dataset's second argument)
    hf_data_dir: str | None = None  # a sub-folder of the dataset repository, e.g. `data/python` (The Stack)
    hf_retries: int = 3  # retries of a failing stream, resumed where it stopped; then the task fails
    hf_retry_wait_s: float = 2.0  # back-off before the first retry, doubled each time (60 s at most)
    follow_symlinks: bool = True  # loops are detected, skipped and counted
    convert_notebooks: bool = True  # .ipynb -> script (code cells as code, markdown as comments), as StarCoder did
    fetch: FetchConfig = field(default_factory=FetchConfig)  # blob-id datasets (The Stack v2): see FetchConfig


@dataclass
class FilterConfig:
    """StarCoder2 heuristics; each removal is counted under its reason."""

    max_lines: int = 100_000  # recipe: drop files > 100k lines
    max_mean_line_length: float = 100.0  # recipe: mean line length > 100 chars
    max_line_length: int = 1000  # recipe: longest line > 1000 chars
    data_max_line_length: int = 100_000  # recipe: data/markup formats only checked for a line > 100k
    data_formats: list[str] = field(default_factory=lambda: ["markdown", "json", "yaml", "html", "xml", "css", "text"])  # recipe: "data/markup formats"
    autogen_markers: list[str] = field(default_factory=lambda: [
        "auto-generated", "autogenerated", "automatically generated", "generated automatically",
        "this file is generated"])  # recipe, matched lower-cased
    autogen_lines: int = 5  # recipe: markers in the first 5 lines
    min_alpha_fraction: float = 0.25  # recipe: < 25% alphabetic characters
    encoded_max_match: int = 1024  # recipe: one base64/hex/\u run longer than 1024 chars
    encoded_max_fraction: float = 0.5  # recipe: encoded runs cover > 50% of the file
    data_file_languages: list[str] = field(default_factory=lambda: ["json", "yaml", "text"])  # recipe: JSON/YAML/Text
    data_file_max_lines: int = 512  # recipe: data files above 512 lines








@dataclass
class PIIConfig:
    """bigcode-dataset style regex redaction: emails, IP addresses, keys/secrets, passwords."""

    enabled: bool = True
    emails: bool = True
    ips: bool = True
    keys: bool = True
    passwords: bool = True
    min_secret_entropy: float = 3.0  # not published: bits/char a generic `key = "..."` value needs to count as a secret






@dataclass
class ExecutorConfig(executor.ExecutorConfig):
    """Where datatrove runs the stages. slurm: the stages are chained with afterok and submitted with
    --kill-on-invalid-dep=yes (curate/slurm.py); report.json appears when the last job ends, and
    executor.wait=true blocks until then."""


@dataclass
class CurateConfig:
    # folders (a source tree, or a dataset: JSONL/Parquet shards and no source files), .jsonl/.jsonl.gz/.parquet
    # files, globs (`shards/*.parquet`), or hf:<dataset name or local dataset folder>
    inputs: list[str] = MISSING
    output_dir: str = MISSING
    read: ReadConfig = field(default_factory=ReadConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontamination: DecontamConfig = field(default_factory=DecontamConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    progress: bool = True  # a banner per stage (datatrove logs every task's progress and stats either way)


def validate(cfg: CurateConfig) -> None:
    """Cross-field checks before any work starts; errors name the key and the value."""
    require(len(cfg.inputs) > 0, "inputs", list(cfg.inputs), "needs at least one path")
    require(bool(cfg.output_dir), "output_dir", cfg.output_dir, "must be a folder path")
    require("://" not in cfg.output_dir or cfg.output_dir.startswith("file://"), "output_dir", cfg.output_dir,
            "must be a local or shared-filesystem folder: curation keeps work files, completion markers and "
            "memory-mapped token shards there; write locally, then copy (e.g. `aws s3 sync`)")
    r = cfg.read
    require(r.repo_depth >= 0, "read.repo_depth", r.repo_depth, "must be >= 0")
    require(r.max_file_bytes > 0, "read.max_file_bytes", r.max_file_bytes, "must be positive")
    require(r.hf_retries >= 0, "read.hf_retries", r.hf_retries, "must be >= 0")
    require(r.hf_retry_wait_s >= 0, "read.hf_retry_wait_s", r.hf_retry_wait_s, "must be >= 0")
    fe = r.fetch
    require("{blob_id}" in fe.key_template, "read.fetch.key_template", fe.key_template, "must contain {blob_id}")
    require(fe.compression in ("gzip", "none"), "read.fetch.compression", fe.compression, "must be gzip or none")
    require(bool(fe.bucket), "read.fetch.bucket", fe.bucket, "must name a bucket")
    for key in ("threads", "fail_after"):
        require(getattr(fe, key) >= 1, f"read.fetch.{key}", getattr(fe, key), "must be >= 1")
    require(fe.retries >= 0, "read.fetch.retries", fe.retries, "must be >= 0")
    require(fe.timeout_s > 0, "read.fetch.timeout_s", fe.timeout_s, "must be positive")
    for lang in r.languages:
        require(lang in LANGUAGES, "read.languages", lang, f"unknown language; known: {sorted(LANGUAGES)}")
    if r.repo_pattern is not None:
        import re

        try:
            groups = re.compile(r.repo_pattern).groups
        except re.error as err:
            raise ConfigError(f"read.repo_pattern={r.repo_pattern!r}: not a regex ({err})") from None
        require(groups >= 1, "read.repo_pattern", r.repo_pattern, "needs a capture group naming the repository")
    f = cfg.filter
    for key in ("max_lines", "max_line_length", "data_max_line_length", "autogen_lines", "encoded_max_match",
                "data_file_max_lines"):
        require(getattr(f, key) > 0, f"filter.{key}", getattr(f, key), "must be positive")
    require(f.max_mean_line_length > 0, "filter.max_mean_line_length", f.max_mean_line_length, "must be positive")
    for key in ("min_alpha_fraction", "encoded_max_fraction"):
        require(0.0 <= getattr(f, key) <= 1.0, f"filter.{key}", getattr(f, key), "must be in [0, 1]")
    d = cfg.dedup
    require(d.ngram >= 1, "dedup.ngram", d.ngram, "must be >= 1")
    require(d.num_bands >= 1, "dedup.num_bands", d.num_bands, "must be >= 1")
    require(d.rows_per_band >= 1, "dedup.rows_per_band", d.rows_per_band, "must be >= 1")
    require(0.0 < d.threshold < 1.0, "dedup.threshold", d.threshold, "must be in (0, 1)")
    implied = (1.0 / d.num_bands) ** (1.0 / d.rows_per_band)
    require(abs(implied - d.threshold) <= 0.05, "dedup.threshold", d.threshold,
             f"dedup.num_bands={d.num_bands} x dedup.rows_per_band={d.rows_per_band} implement a threshold of "
             f"about {implied:.2f}; change the bands/rows to match")
    require(d.workers_per_band >= 1, "dedup.workers_per_band", d.workers_per_band, "must be >= 1")
    require(d.exact_shards >= 0, "dedup.exact_shards", d.exact_shards, "must be >= 0 (0: executor.tasks)")
    c = cfg.decontamination
    require(c.min_chars >= 1, "decontamination.min_chars", c.min_chars, "must be >= 1")
    require(c.ngram >= 2, "decontamination.ngram", c.ngram, "must be >= 2")
    require(c.short_window >= 0, "decontamination.short_window", c.short_window, "must be >= 0 (0: off)")
    require(c.min_docstring_chars >= 1, "decontamination.min_docstring_chars", c.min_docstring_chars, "must be >= 1")
    names = [b.name for b in c.benchmarks]
    require(len(names) == len(set(names)), "decontamination.benchmarks", names, "names must be unique")
    for i, b in enumerate(c.benchmarks):
        require(len(b.fields) > 0, f"decontamination.benchmarks[{i}].fields", list(b.fields), "needs a field")
    require(cfg.pii.min_secret_entropy >= 0.0, "pii.min_secret_entropy", cfg.pii.min_secret_entropy, "must be >= 0")
    g = cfg.group
    require(g.buckets >= 1, "group.buckets", g.buckets, "must be >= 1")
    require(0.0 <= g.metadata_probability <= 1.0, "group.metadata_probability", g.metadata_probability,
             "must be in [0, 1]")
    t = cfg.tokenize
    require(t.train_vocab_size >= 300, "tokenize.train_vocab_size", t.train_vocab_size,
             "must be >= 300 (256 bytes + special tokens)")
    require(t.train_sample_mb > 0, "tokenize.train_sample_mb", t.train_sample_mb, "must be positive")
    require(t.shard_tokens > 0, "tokenize.shard_tokens", t.shard_tokens, "must be positive")
    require(t.batch_size > 0, "tokenize.batch_size", t.batch_size, "must be positive")
    executor.check_executor(cfg.executor)



def to_config(cfg: Any) -> CurateConfig:
    """A composed DictConfig -> CurateConfig. Keys added with Hydra's ``+key=...`` get through composition
    even on a structured config, so every key is checked against the schema here (the error names it)."""
    return to_object(cfg, CurateConfig)


def register() -> None:
    """Put the schema in Hydra's ConfigStore: YAML is type-checked and unknown keys fail."""
    # the executor group: `executor=local|slurm|ray` on the command line swaps the whole block
    register_schema("curate", CurateConfig,
                    executor.executor_group(ExecutorConfig, slurm_tasks=256, ray_tasks=64))
