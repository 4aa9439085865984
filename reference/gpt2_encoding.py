"""tiktoken's GPT-2 encoding, built offline from the ranks file that tiktoken-rs bundles.

tiktoken normally downloads `r50k_base.tiktoken` from openaipublic; there is no internet here, but tiktoken-rs ships
the same file in its crate. We run tiktoken's *own* constructor (`tiktoken_ext.openai_public.r50k_base`) with its
loader pointed at that local file, so tiktoken itself checks the file against the sha256 it expects
(`expected_hash`) and supplies its own pat_str and special tokens. The result is tiktoken's gpt2 / r50k_base
encoding, byte for byte, and is what the golden fixture and the Python reference benchmark are built with.

    from gpt2_encoding import gpt2_encoding
    enc = gpt2_encoding()          # tiktoken.Encoding named "gpt2"
"""

from __future__ import annotations

import contextlib
import glob
import os

EOT = 50256
RANKS_ENV = "TOKENMILL_R50K_RANKS"


def _cargo_home() -> str:
    return os.environ.get("CARGO_HOME") or os.path.join(os.path.expanduser("~"), ".cargo")


def bundled_asset(name: str) -> str:
    """Path of `name` in tiktoken-rs's assets/ in the cargo registry (newest version first)."""
    pattern = os.path.join(_cargo_home(), "registry", "src", "*", "tiktoken-rs-*", "assets", name)
    hits = sorted(glob.glob(pattern), reverse=True)
    if not hits:
        raise FileNotFoundError(
            f"no {name} under {pattern}; run `cargo fetch` in the repo (tiktoken-rs bundles it), "
            f"or point {RANKS_ENV} at an r50k_base.tiktoken file"
        )
    return hits[0]


def ranks_path() -> str:
    return os.environ.get(RANKS_ENV) or bundled_asset("r50k_base.tiktoken")


@contextlib.contextmanager
def _no_tiktoken_cache():
    """Read local files directly instead of copying them into tiktoken's cache directory."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def _tiktoken_constructor_args(path: str) -> tuple[dict, str]:
    """Run tiktoken's own r50k_base() with its file loader redirected to `path`; returns (kwargs, expected_hash)."""
    import tiktoken.load
    from tiktoken_ext import openai_public

    seen: dict = {}
    original = openai_public.load_tiktoken_bpe

    def load_local(url: str, expected_hash: str | None = None):
        if not url.endswith("/r50k_base.tiktoken"):
            raise ValueError(f"unexpected tiktoken blob {url}")
        if not expected_hash:
            raise ValueError("this tiktoken does not pin a hash for r50k_base; cannot prove the ranks file is its own")
        seen["expected_hash"] = expected_hash
        # With caching off, tiktoken's read_file_cached skips its hash check, so run tiktoken's check_hash here.
        if not tiktoken.load.check_hash(tiktoken.load.read_file(path), expected_hash):
            raise ValueError(f"{path} is not tiktoken's r50k_base.tiktoken (sha256 differs from {expected_hash})")
        return tiktoken.load.load_tiktoken_bpe(path, expected_hash=expected_hash)

    openai_public.load_tiktoken_bpe = load_local
    try:
        with _no_tiktoken_cache():
            kwargs = openai_public.r50k_base()
    finally:
        openai_public.load_tiktoken_bpe = original
    return kwargs, seen["expected_hash"]


def gpt2_encoding(path: str | None = None):
    """tiktoken's GPT-2 encoding (identical ranks, pattern and special tokens to tiktoken.get_encoding("gpt2"))."""
    import tiktoken

    kwargs, _ = _tiktoken_constructor_args(path or ranks_path())
    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=kwargs["pat_str"],
        mergeable_ranks=kwargs["mergeable_ranks"],
        special_tokens=kwargs["special_tokens"],
        explicit_n_vocab=kwargs["explicit_n_vocab"],
    )
    assert enc.eot_token == EOT and enc.n_vocab == 50257, (enc.eot_token, enc.n_vocab)
    return enc


def provenance(path: str | None = None) -> dict:
    """What the encoding was built from, for fixture headers: file, its sha256, tiktoken's expected hash."""
    import hashlib

    import tiktoken

    path = path or ranks_path()
    _, expected = _tiktoken_constructor_args(path)
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    return {
        "ranks_file": os.path.basename(os.path.dirname(os.path.dirname(path))) + "/assets/" + os.path.basename(path),
        "ranks_sha256": actual,
        "tiktoken_expected_sha256": expected,
        "tiktoken_version": tiktoken.__version__,
    }


def check_against_data_gym_gpt2() -> None:
    """tiktoken's `gpt2()` builds its ranks from GPT-2's original vocab.bpe + encoder.json, not from r50k_base.tiktoken.
    Rebuild them that way from the copies tiktoken-rs bundles (vocab.bpe checked against tiktoken's pinned hash;
    tiktoken itself asserts encoder.json agrees with the merges) and require the very same ranks."""
    import inspect

    import tiktoken.load
    from tiktoken_ext import openai_public

    src = inspect.getsource(openai_public.gpt2)
    vocab_hash = src.split('vocab_bpe_hash="', 1)[1].split('"', 1)[0]
    vocab_bpe = bundled_asset("vocab.bpe")
    if not tiktoken.load.check_hash(tiktoken.load.read_file(vocab_bpe), vocab_hash):
        raise ValueError(f"{vocab_bpe} is not GPT-2's vocab.bpe (sha256 differs from tiktoken's {vocab_hash})")
    with _no_tiktoken_cache():
        data_gym = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=vocab_bpe,
            encoder_json_file=bundled_asset("encoder.json"),
            vocab_bpe_hash=vocab_hash,
        )
    r50k, _ = _tiktoken_constructor_args(ranks_path())
    if data_gym != r50k["mergeable_ranks"]:
        raise AssertionError("GPT-2 data-gym ranks differ from r50k_base ranks")
