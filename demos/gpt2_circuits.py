"""Demo: the NDM paper's GPT-2 small validation suite, for users with GPT-2's weights (not run by default).

    python -m tl_tensorsim.demos.gpt2_circuits --quick                    # GPT-2 from the model hub, laptop sizes
    python -m tl_tensorsim.demos.gpt2_circuits --model-path DIR           # a local Hugging Face GPT-2 folder
    python -m tl_tensorsim.demos.gpt2_circuits --partitions DIR           # the paper's released R matrices
    python -m tl_tensorsim.demos.gpt2_circuits --random-weights 8         # offline plumbing check (no other flags)
    tl-tensorsim demo gpt2_circuits [--full]                              # the same, inside the report

GPT-2 small is loaded without weight processing (`fold_ln`, centring and value-bias folding off), the convention of
the paper's code, whose released R matrices were fitted on raw activations. `--model-path` converts a local
`GPT2LMHeadModel` folder with TransformerLens' GPT-2 conversion (TransformerLens 3.x) without the hub. Partitions:
`--partitions DIR` reads `R-gpt2-x{L}.post.pt` + `R_config-gpt2-x{L}.post.json` for L = 4, 6, 8, 9; otherwise NDM
is fitted per layer on a text corpus (`datasets`: MiniPile when online, or `--text FILE ...`), with laptop-sized
settings under `--quick`. The report holds the Gini table beside the paper's numbers. Every path given is checked
before anything loads (a missing one is a usage error, exit 2); GPT-2 that cannot be loaded from the hub exits 1.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

TITLE = "GPT-2 small: the NDM validation suite (needs GPT-2's weights)"
ORDER = 38
DEFAULT = False
REQUIRES = ("transformers",)  # a dependency of transformer_lens; imported here for --model-path

LAYERS = (4, 6, 8, 9)
QUICK = {"prompts": 50, "seqs": 256, "ctx": 128, "ndm": dict(unit_size=64, max_steps=3000, merge_start=1000,
         merge_interval=500, key_pool=16_384, mi_queries=2000, mi_keys=8192)}  # fmt: skip
FULL = {"prompts": 1000, "seqs": 1024, "ctx": 1024, "ndm": {}}  # fit_ndm's defaults are the paper's GPT-2 settings
NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)


def tl_config_from_hf(hf_config: dict[str, Any]) -> dict[str, Any]:
    """TransformerLens config fields of a Hugging Face GPT-2 `config.json`."""
    d, h = int(hf_config["n_embd"]), int(hf_config["n_head"])
    return dict(n_layers=int(hf_config["n_layer"]), d_model=d, n_heads=h, d_head=d // h,
                d_mlp=int(hf_config.get("n_inner") or 4 * d), n_ctx=int(hf_config["n_positions"]),
                d_vocab=int(hf_config["vocab_size"]), act_fn="gelu_new", normalization_type="LN",
                eps=float(hf_config.get("layer_norm_epsilon", 1e-5)), model_name="gpt2")  # fmt: skip


GPT2_SMALL = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
                  act_fn="gelu_new", normalization_type="LN", model_name="gpt2-shaped-random", seed=0)  # fmt: skip
PAPER_SIZES = (128, 128, 96, 96, 64, 64, 64, 32, 32, 32, 32)  # the paper's final x4.post partition (ndm.md §1.4)


def random_gpt2_setup(tokenizer: Any = None, seed: int = 0) -> tuple[Any, dict[int, Any]]:
    """A GPT-2-small-shaped model with random weights and the real tokenizer, and random partitions of the paper's
    x4 sizes at layers 4, 6, 8, 9: the whole suite's plumbing at full size, offline (the numbers mean nothing)."""
    from tl_tensorsim.adapter import ModelView
    from tl_tensorsim.circuits.datasets import gpt2_tokenizer
    from tl_tensorsim.ndm import SubspacePartition

    view = ModelView.build(GPT2_SMALL, tokenizer=tokenizer or gpt2_tokenizer())
    return view, {layer: SubspacePartition.random(PAPER_SIZES, seed=seed + layer) for layer in LAYERS}


def load_gpt2(model_path: str | None = None, tokenizer: Any = None, device: str | None = None) -> Any:
    """GPT-2 as a `ModelView`, unprocessed: from a local HF folder (`model_path`), else from the model hub."""
    from tl_tensorsim.adapter import ModelView
    from tl_tensorsim.circuits.datasets import gpt2_tokenizer

    if model_path is None:
        return ModelView.from_pretrained("gpt2", device=device, **NO_PROCESSING)
    try:
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    except ImportError:
        raise ValueError(
            "model_path: converting a local GPT-2 folder uses TransformerLens 3.x's convert_gpt2_weights, which this "
            "TransformerLens lacks; install transformer_lens<4 or load GPT-2 from the hub (no --model-path)"
        ) from None
    from transformer_lens import HookedTransformerConfig
    from transformers import GPT2LMHeadModel

    folder = Path(model_path)
    cfg = tl_config_from_hf(json.loads((folder / "config.json").read_text()))
    hf = GPT2LMHeadModel.from_pretrained(folder)
    state = convert_gpt2_weights(hf, HookedTransformerConfig(**cfg))
    if tokenizer is None:
        has_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        tokenizer = _hf_folder_tokenizer(folder) if has_files else gpt2_tokenizer()
    view = ModelView.build(cfg, tokenizer=tokenizer, device=device)
    expected = view.state_dict()
    state = {k: v for k, v in state.items() if k in expected}
    state.setdefault("unembed.b_U", torch.zeros_like(expected["unembed.b_U"]))  # GPT-2 has no unembedding bias
    return view.load_state_dict(state)


def _hf_folder_tokenizer(folder: Path) -> Any:
    import tempfile

    from tl_tensorsim.circuits.datasets import gpt2_tokenizer

    with tempfile.TemporaryDirectory() as tmp:  # vocab.json / merges.txt are encoder.json / vocab.bpe under new names
        (Path(tmp) / "encoder.json").write_bytes((folder / "vocab.json").read_bytes())
        (Path(tmp) / "vocab.bpe").write_bytes((folder / "merges.txt").read_bytes())
        return gpt2_tokenizer(tmp)


def corpus_tokens(tokenizer: Any, n_seq: int, n_ctx: int, text_files: Sequence[str] = ()) -> torch.Tensor:
    """`[n_seq, n_ctx]` token ids: documents joined with `<|endoftext|>` and cut into sequences, each starting with
    `<|endoftext|>` as BOS (the paper's convention). Text from `text_files`, else MiniPile through `datasets`."""
    from tl_tensorsim.circuits.datasets import TextEncoder

    enc = TextEncoder(tokenizer)
    eot = enc.bos_token_id
    if text_files:
        docs = (Path(f).read_text(errors="replace") for f in text_files)
    else:
        from datasets import load_dataset

        docs = (row["text"] for row in load_dataset("JeanKaddour/minipile", split="train", streaming=True))
    stream: list[int] = []
    need = n_seq * (n_ctx - 1)
    for doc in docs:
        stream += enc.encode(doc) + [eot]
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(f"text_files: {len(stream)} tokens of text; {need} needed for {n_seq} x {n_ctx - 1}")
    body = torch.tensor(stream[:need]).view(n_seq, n_ctx - 1)
    return torch.cat([torch.full((n_seq, 1), eot), body], 1)


def official_partitions(folder: str) -> dict[int, tuple[Path, Path]]:
    """`{layer: (R file, config file)}` of the paper's released `R-gpt2-x{L}.post.pt` / `R_config-gpt2-x{L}.post.json`;
    FileNotFoundError naming every missing file (or the missing folder)."""
    layers = ", ".join(map(str, LAYERS))
    expected = f"a folder with the paper's R-gpt2-x{{L}}.post.pt and R_config-gpt2-x{{L}}.post.json, L = {layers}"
    hint = "pass the folder that holds them, or leave --partitions out to fit NDM on a text corpus"
    if not Path(folder).is_dir():
        what = "is a file" if Path(folder).exists() else "does not exist"
        raise FileNotFoundError(
            f"partitions (--partitions): expected {expected}; got {str(folder)!r}, which {what}; {hint}"
        )
    out = {}
    for layer in LAYERS:
        out[layer] = Path(folder) / f"R-gpt2-x{layer}.post.pt", Path(folder) / f"R_config-gpt2-x{layer}.post.json"
    missing = [p.name for pair in out.values() for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"partitions (--partitions): expected {expected}; {str(folder)!r} lacks {', '.join(missing)}; {hint}"
        )
    return out


def check_paths(model_path: str | None = None, partitions: str | None = None, text_files: Sequence[str] = ()) -> None:
    """Refuse, before anything loads or runs, a path the user gave that is not there: FileNotFoundError naming the
    argument, what it expects and what it got."""
    if model_path is not None:
        folder = Path(model_path)
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise FileNotFoundError(
                f"model_path (--model-path): expected a local Hugging Face GPT-2 folder (config.json + weights, as "
                f"GPT2LMHeadModel.save_pretrained writes); got {model_path!r}, which {what}; leave --model-path out "
                "to load GPT-2 from the model hub"
            )
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"model_path (--model-path): expected a local Hugging Face GPT-2 folder (config.json + weights); "
                f"{model_path!r} has no config.json; pass the folder GPT2LMHeadModel.save_pretrained wrote"
            )
    if partitions is not None:
        official_partitions(partitions)
    for f in text_files:
        if not Path(f).is_file():
            what = "is a folder" if Path(f).is_dir() else "does not exist"
            raise FileNotFoundError(
                f"text_files (--text): expected text files; got {str(f)!r}, which {what}; pass files (not folders), "
                "or leave --text out to read MiniPile through `datasets`"
            )


def run_suite(view: Any, tokenizer: Any, sizes: dict[str, Any], partitions: str | None = None,
              text_files: Sequence[str] = (), progress: bool = True) -> Any:  # fmt: skip
    """`circuits.validate_ndm` on GPT-2 with the given sizes (QUICK or FULL)."""
    from tl_tensorsim.circuits import validate_ndm

    parts = official_partitions(partitions) if partitions else None
    data = corpus_tokens(tokenizer, sizes["seqs"], sizes["ctx"], text_files)
    return validate_ndm(view, tokenizer, partitions=parts, data=data, n_prompts=sizes["prompts"], ndm=sizes["ndm"],
                        progress=progress)  # fmt: skip


def run(report: Any, full: bool = False, model_path: str | None = None, partitions: str | None = None,
        text_files: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """The suite into `report`. Paths given (`model_path`, `partitions`, `text_files`) are checked first
    (`check_paths`) and a local folder that fails to load raises; GPT-2 from the model hub (no `model_path`) that
    cannot be loaded is noted in the report instead, returning `{"loaded": False, "error": ...}`."""
    from tl_tensorsim.circuits.datasets import gpt2_tokenizer

    check_paths(model_path, partitions, text_files)
    t0 = time.perf_counter()
    if model_path is not None:
        view = load_gpt2(model_path)
    else:
        try:
            view = load_gpt2()
        except Exception as exc:  # offline, no local copy: say so in the report rather than fail the whole demo run
            error = f"{type(exc).__name__}: {exc}"
            report.text(
                f"GPT-2 could not be loaded from the model hub ({error}); pass `--model-path DIR` or go online."
            )
            return {"loaded": False, "error": error}
    tok = getattr(view.model, "tokenizer", None) or gpt2_tokenizer()
    res = run_suite(view, tok, FULL if full else QUICK, partitions, text_files)
    res.report_section(report)
    return {"NDM mean Gini raw": res.mean_gini("ndm"), "NDM mean Gini per dim": res.mean_gini("ndm", "dim"),
            "seconds": time.perf_counter() - t0}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    from tl_tensorsim.report import Report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", help="a local Hugging Face GPT-2 folder (config.json + weights)")
    p.add_argument("--partitions", help="folder with the paper's R-gpt2-x{L}.post.pt / R_config-*.json files")
    p.add_argument("--text", nargs="+", default=(), help="local text files for the NDM corpus (default: MiniPile)")
    p.add_argument("--quick", action="store_true", help="laptop sizes (50 prompts, short NDM fits)")
    p.add_argument("--out", default="gpt2_circuits_report", help="report folder")
    p.add_argument(
        "--random-weights",
        type=int,
        default=None,
        metavar="N_PROMPTS",
        help="offline plumbing check: GPT-2-shaped random weights, random partitions, real tokenizer, N prompts per "
        "task (takes none of --model-path, --partitions, --text, --quick)",
    )
    args = p.parse_args(argv)
    if args.random_weights is not None:
        if args.random_weights < 1:
            p.error(f"--random-weights: expected a number of prompts per task >= 1; got {args.random_weights}")
        flags = {"--model-path": args.model_path, "--partitions": args.partitions, "--text": args.text,
                 "--quick": args.quick}  # fmt: skip
        given = [flag for flag, value in flags.items() if value]
        if given:
            p.error(
                f"--random-weights: a plumbing check on random weights with random partitions, its own sizes and no "
                f"corpus, so it takes none of {', '.join(flags)}; got {', '.join(given)} with it; drop "
                f"{'it' if len(given) == 1 else 'them'}, or drop --random-weights to run on GPT-2's weights"
            )
    try:
        report = Report(args.out, title="GPT-2 small: NDM validation")
        if args.random_weights is None:
            check_paths(args.model_path, args.partitions, args.text)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    if args.random_weights is not None:
        from tl_tensorsim.circuits import validate_ndm

        t0 = time.perf_counter()
        view, parts = random_gpt2_setup()
        res = validate_ndm(view, partitions=parts, n_prompts=args.random_weights, batch_size=32)
        report.text("GPT-2-small-shaped model with random weights (plumbing check; the numbers mean nothing).")
        res.report_section(report)
        print(res, f"\n{time.perf_counter() - t0:.0f} s; report: {report.write()}")
        return
    out = run(report, full=not args.quick, model_path=args.model_path, partitions=args.partitions,
              text_files=args.text)  # fmt: skip
    print(json.dumps(out, indent=2))
    print(f"report: {report.write()}")
    if out.get("loaded") is False:
        p.exit(1, f"{p.prog}: GPT-2 could not be loaded from the model hub ({out['error']}); pass --model-path DIR "
                  "(a local Hugging Face GPT-2 folder) or go online\n")  # fmt: skip


if __name__ == "__main__":
    main()
