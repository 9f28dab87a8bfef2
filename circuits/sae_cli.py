"""``interp sae train``: train a sparse autoencoder or transcoder on the hook layer and save it in SAELens's layout;
``interp sae latents``: its latent pages (`interp.circuits.latent_pages`) as a run folder for the app.

The run folder holds the dictionary (``cfg.json`` + ``sae_weights.safetensors``, readable by
`interp.dictionary.load_dictionary` and by SAELens 6) beside the usual run files (``manifest.json`` with L0,
explained variance, dead-latent fraction, the next-token loss increase when spliced in and tokens/second;
``scores.safetensors`` with the training curve and latent frequencies; ``report.html``). While it trains, the
checkpoint in the folder (``partial.safetensors`` + ``progress.json``) lets Ctrl-C keep the work done and
``--resume`` finish it with the same weights an uninterrupted run gets.

    interp sae train --site resid_post.6 --latents 4608 --tokens 2M --arch topk --k 32 --out runs/sae6
    interp sae latents --dictionary runs/sae6 --tokens 200k --out runs/sae6-latents
"""

from __future__ import annotations

import re
import shlex
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console

from interp.cli_support import (AS_JSON, BACKEND, DEVICE, DTYPE, FORCE, MODEL, SEED, check_outside_out, command_line,
                                finish, load_model, progress_bar)
from interp.errors import InterpError

app = typer.Typer(help="Sparse dictionaries: train SAEs and transcoders on the hook layer (SAELens layout on disk); "
                  "their latent pages.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)



@app.callback()
def _group() -> None:
    """Sparse dictionaries: train SAEs and transcoders on the hook layer (SAELens layout on disk); their latent pages."""


_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGbB]?)\s*")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_count(text: str, option: str = "--tokens") -> int:
    """``"2M"`` -> 2000000, ``"500k"`` -> 500000, ``"12000"`` -> 12000; a one-line error otherwise."""
    match = _COUNT.fullmatch(text or "")
    if match is None or float(match.group(1)) * _SCALE[match.group(2).lower()] < 1:
        raise InterpError(f"{option} must be a positive count such as 20000, 500k or 2M, got '{text}'")
    return int(float(match.group(1)) * _SCALE[match.group(2).lower()])


def _interrupt(*_):
    raise KeyboardInterrupt


@contextmanager
def _terminate_as_interrupt():
    """While the block runs, SIGTERM raises KeyboardInterrupt (in the main thread), so both stop a run the same way."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _resume_command() -> str:
    parts = [p for p in shlex.split(command_line()) if p != "--force"]
    return shlex.join(parts + ([] if "--resume" in parts else ["--resume"]))


def dictionary_from(trained, model_name: str, corpus: str):
    """The trained weights as an `interp.dictionary.Dictionary` (SAELens metadata filled in)."""
    from interp.dictionary import Dictionary

    cfg, w = trained.cfg, trained.weights
    meta = {"context_size": cfg.context, "prepend_bos": False, "dataset_path": corpus, "seqpos_slice": [1, None],
            "trained_by": "interp sae train", "training_tokens": trained.tokens_trained}
    return Dictionary(cfg.arch, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], site=trained.in_site,
                      out_site=cfg.out_site, threshold=w.get("threshold"), k=cfg.k,
                      apply_b_dec_to_input=cfg.out_site is None, normalize_activations="none", model_name=model_name,
                      cfg={"metadata": meta})


def train_run(model, cfg, out: Path, resume: bool = False, backend: str | None = None, progress=None,
              checkpoint_seconds: float = 60.0, command: str = "sae train"):
    """Train on ``cfg.corpus``, evaluate on held-out documents, save the dictionary and the run into ``out``.

    Returns the `interp.results.RunResult` (not yet saved: `interp.cli_support.finish` saves it).
    """
    from interp.circuits.corpus import TokenStream, load_corpus, split_documents
    from interp.circuits.sae_train import evaluate, train
    from interp.dictionary import save_dictionary
    from interp.results import RunResult, describe_tensor, run_header

    cfg.check()
    train_docs, eval_docs = split_documents(load_corpus(cfg.corpus), seed=cfg.seed)
    stream = TokenStream(train_docs, model.tokenizer, cfg.context, cfg.seed)
    eval_stream = TokenStream(eval_docs, model.tokenizer, cfg.context, cfg.seed)
    trained = train(model, cfg, stream, out, resume, backend, progress, checkpoint_seconds)
    dictionary = dictionary_from(trained, model.name, cfg.corpus)
    t0 = time.perf_counter()
    eval_tokens = eval_stream.contexts(0, min(cfg.eval_contexts, eval_stream.per_epoch))
    metrics, frequency = evaluate(model, dictionary, eval_tokens, cfg.out_site or trained.in_site, backend,
                                  cfg.model_batch)
    eval_s = time.perf_counter() - t0
    metrics |= {"dead_fraction": float(trained.dead.float().mean()), "dead_window_tokens": cfg.dead_tokens,
                "never_fired_on_eval": float((frequency == 0).float().mean()),
                "tokens_per_second": trained.tokens_trained / trained.train_seconds if trained.train_seconds else None,
                "epochs": trained.tokens_trained / (stream.per_epoch * (cfg.context - 1))}
    save_dictionary(dictionary, out)
    scores = {"sae/step": trained.curve[:, 0].float(), "sae/loss": trained.curve[:, 1].float(),
              "sae/latent_frequency": frequency, "sae/log10_frequency": frequency.clamp_min(1e-7).log10()}
    tensors = {name: describe_tensor(name, value, ["point" if name in ("sae/step", "sae/loss") else "latent"])
               for name, value in scores.items()}
    tensors["sae/latent_frequency"]["plot"] = False
    what = f"transcoder {trained.in_site} -> {cfg.out_site}" if cfg.out_site else f"SAE on {trained.in_site}"
    summary = (f"{cfg.arch} {what}, {cfg.d_sae} latents, {trained.tokens_trained} tokens: L0 {metrics['l0']:.1f}, "
               f"explained variance {metrics['explained_variance']:.3f}, dead {metrics['dead_fraction']:.1%}, "
               f"next-token loss {metrics['loss_increase']:+.4f} when spliced "
               f"({metrics['loss_clean']:.3f} -> {metrics['loss_spliced']:.3f}), "
               f"{metrics['tokens_per_second'] or 0:.0f} tokens/s")
    manifest = {**run_header(model, command, cfg.seed, backend), "method": f"sparse dictionary ({cfg.arch})",
                "parameters": asdict(cfg) | {"in_site": trained.in_site, "resumed_from_step": trained.resumed_from},
                "metrics": metrics, "dictionary": {"folder_files": ["cfg.json", "sae_weights.safetensors"],
                                                   "site": trained.in_site, "out_site": cfg.out_site},
                "timings": {"train_s": round(trained.train_seconds, 3), "eval_s": round(eval_s, 3)},
                "notes": [{"title": "Dictionary", "text": summary}], "tensors": tensors,
                "lines": [{"title": "Training loss", "x": "sae/step", "ys": ["sae/loss"], "x_title": "step",
                           "y_title": "loss (normalised activations)"}],
                "histograms": [{"title": "Latent frequency on held-out text", "x_title": "log10 fraction of tokens",
                                "tensors": ["sae/log10_frequency"]}]}
    return RunResult(manifest, scores)


@app.command("train")
def train_command(
    site: str = typer.Option(None, help="Site the SAE reads and reconstructs, e.g. resid_post.6 (a transcoder: "
                             "the MLP's input, derived from --transcoder-out when left out)."),
    latents: int = typer.Option(..., help="Number of latents (dictionary width)."),
    tokens: str = typer.Option(..., help="Training tokens, e.g. 200000, 500k, 2M."),
    arch: str = typer.Option(None, help="topk (SAE default), jumprelu or relu (transcoder default)."),
    k: int = typer.Option(32, help="Active latents per token (topk)."),
    l1: float = typer.Option(None, help="Sparsity coefficient: L1 for relu (default 5), L0 for jumprelu (default 1)."),
    corpus: str = typer.Option("builtin", help="builtin (English text shipped with interp), a .txt file (one document "
                               "per line or blank-line separated) or a .jsonl file with a 'text' field."),
    transcoder_out: str = typer.Option(None, "--transcoder-out", help="Train a transcoder predicting this MLP output "
                                       "(mlp_out.L) from the MLP's input."),
    lr: float = typer.Option(4e-4, help="Adam learning rate (linear warm-up over 5%, decay over the last 20%)."),
    batch_size: int = typer.Option(1024, help="Activations per training step."),
    context: int = typer.Option(128, help="Tokens per context."),
    model_batch: int = typer.Option(8, help="Contexts per model forward."),
    buffer: int = typer.Option(16, help="Model batches per shuffle buffer (a chunk; checkpoints fall between chunks)."),
    checkpoint_seconds: float = typer.Option(60.0, help="Checkpoint at the first chunk boundary after this many seconds."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/sae-<time>)."),
    resume: bool = typer.Option(False, help="Complete the interrupted run in --out (same options)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE,
) -> None:
    """Train a sparse autoencoder (or transcoder) and write it, with its evaluation, as a run folder."""
    from interp.circuits.sae_train import TrainConfig
    from interp.outdir import PROGRESS, prepare_out
    from interp.sites import parse_site

    if site is None and transcoder_out is None:
        raise InterpError("give --site (an SAE) or --transcoder-out mlp_out.L (a transcoder)")
    for name, value in (("site", site), ("transcoder-out", transcoder_out)):
        if value is not None and not parse_site(value).writable:
            raise InterpError(f"--{name} {value} is read-only: a dictionary needs a site it can replace")
    if transcoder_out is not None and parse_site(transcoder_out).kind != "mlp_out":
        raise InterpError(f"--transcoder-out must be an MLP output site (mlp_out.L), got '{transcoder_out}'")
    if not 0 <= checkpoint_seconds < float("inf"):
        raise InterpError(f"--checkpoint-seconds must be a finite number >= 0, got {checkpoint_seconds}")
    cfg = TrainConfig(site=site or "", d_sae=latents, tokens=parse_count(tokens), k=k, l1=l1, out_site=transcoder_out,
                      arch=arch or ("relu" if transcoder_out else "topk"), lr=lr, batch_size=batch_size,
                      context=context, model_batch=model_batch, buffer=buffer, corpus=corpus, seed=seed).check()
    from interp.circuits.corpus import load_corpus

    load_corpus(corpus)  # a missing or unreadable corpus fails here, before the model loads
    if resume and out is None:
        raise InterpError("--resume needs --out DIR: the folder of the interrupted run")
    check_outside_out(out, force, corpus=corpus if corpus != "builtin" else None)
    existed = out is not None and Path(out).exists()
    folder = prepare_out(out, "sae", force, resume)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _terminate_as_interrupt():
        try:
            m = load_model(console, model, backend, device, dtype)
            if transcoder_out is None:
                cfg.site = str(m.site(site))
            else:
                from interp.circuits.sae_train import in_site_for

                cfg.site = in_site_for(m, transcoder_out)
                if site is not None and str(m.site(site)) != cfg.site:
                    raise InterpError(f"--site {site} is not the input of {transcoder_out}'s MLP ({cfg.site}): "
                                      "leave --site out")
            with progress_bar(console) as bar:
                task = bar.add_task("training", total=cfg.tokens)
                result = train_run(m, cfg, folder, resume, backend,
                                   lambda done, total: bar.update(task, completed=done), checkpoint_seconds, command_line())
            finish(console, result, folder, t0, as_json, result.manifest["notes"][0]["text"])
            from interp.outdir import Checkpoint

            Checkpoint(folder, {}).clear()
        except KeyboardInterrupt:
            if (folder / PROGRESS).is_file():
                console.print(f"interrupted: the last checkpoint is kept in {folder}; complete the run with "
                              f"`{_resume_command()}`", highlight=False, soft_wrap=True)
            else:
                _remove_if_created(folder, existed)
                console.print("interrupted before the first checkpoint: nothing was kept; run the command again",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except InterpError:
            _remove_if_created(folder, existed)
            raise


def _remove_if_created(folder: Path, existed: bool) -> None:
    if not existed:
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            pass


@app.command("latents")
def latents_command(
    dictionary: str = typer.Option(..., help="The dictionary's folder (SAELens layout, e.g. what `interp sae train` "
                                   "wrote)."),
    corpus: str = typer.Option("builtin", help="builtin, a .txt file or a .jsonl file with a 'text' field."),
    tokens: str = typer.Option("200k", help="Tokens to read, e.g. 20000, 500k (at most one pass over the corpus)."),
    context: int = typer.Option(64, help="Tokens per context."),
    top: int = typer.Option(20, help="Top-activating contexts kept per latent."),
    window: int = typer.Option(12, help="Tokens kept on each side of a top context's maximum."),
    logit_tokens: int = typer.Option(10, "--logit-tokens", help="Promoted and suppressed tokens kept per latent."),
    model_batch: int = typer.Option(8, help="Contexts per model forward."),
    model: str = MODEL, backend: str = BACKEND, device: str = DEVICE, dtype: str = DTYPE,
    out: str = typer.Option(None, help="Run folder (default runs/latents-<time>)."),
    as_json: bool = AS_JSON, seed: int = SEED, force: bool = FORCE,
) -> None:
    """Latent pages: every latent's density, activation histogram, top-activating contexts and logit effects."""
    from interp.circuits.corpus import load_corpus
    from interp.circuits.latent_pages import latents_run
    from interp.dictionary import check_dictionary, load_dictionary
    from interp.outdir import prepare_out
    from interp.results import MANIFEST, REPORT, SCORES

    n_tokens = parse_count(tokens)
    for name, value, low in (("--context", context, 2), ("--top", top, 1), ("--window", window, 0),
                             ("--logit-tokens", logit_tokens, 1), ("--model-batch", model_batch, 1)):
        if value < low:
            raise InterpError(f"{name} must be at least {low}, got {value}")
    d = load_dictionary(dictionary)  # a bad folder fails here, before the model loads
    load_corpus(corpus)
    check_outside_out(out, force, dictionary=dictionary, corpus=corpus if corpus != "builtin" else None)
    existed = out is not None and Path(out).exists()
    folder = prepare_out(out, "latents", force)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    with _terminate_as_interrupt():
        try:
            m = load_model(console, model, backend, device, dtype)
            check_dictionary(d, m)
            d = d.to(m.device)
            with progress_bar(console) as bar:
                task = bar.add_task("contexts", total=None)
                result = latents_run(m, d, corpus, n_tokens, context, top, window, logit_tokens, model_batch, seed,
                                     backend, lambda done, total: bar.update(task, completed=done, total=total),
                                     command_line(), str(Path(dictionary).resolve()))
            finish(console, result, folder, t0, as_json, result.manifest["notes"][0]["text"])
        except (KeyboardInterrupt, InterpError) as e:
            if not (folder / MANIFEST).is_file():  # an unfinished save leaves no half a run behind
                for name in (SCORES, REPORT):
                    (folder / name).unlink(missing_ok=True)
                _remove_if_created(folder, existed)
            if isinstance(e, InterpError):
                raise
            console.print("interrupted: nothing was written; run the command again", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
