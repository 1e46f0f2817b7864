"""The ``rwkvblocks`` command.

rwkvblocks convert SRC DST [--dtype bf16] [--no-encoder-weights]   upstream .pth -> safetensors dir
    [--vision-heads N] [--vision-config PATH]                       the CLIP tower's head count
rwkvblocks train --preset NAME --stage alignment --data JSON --images DIR --out DIR [--init-lm PTH]
    [--dtype bf16 | --pure-bf16] [--seed S] [--pack] [--checkpoint-every N] [--keep-checkpoints K] [--resume]
    [--config FILE [--set SECTION.FIELD=VALUE ...]] [--encoder-checkpoint PATH]   (explicit flags win)
    [--group-by-length] [--strategy ddp|fsdp2]   (--strategy: under torchrun, one process per rank; rank 0 saves)
rwkvblocks eval --model M --benchmark NAME --questions FILE [--images DIR] [--annotations PATH] [--mode rank]
rwkvblocks score --benchmark NAME --answers FILE [--annotations PATH] [--questions FILE]  score answers
rwkvblocks list [PATTERN] [--params]                                presets, knobs, parameter counts
rwkvblocks info                                                     ops x backends on this machine
rwkvblocks demo [--steps N] [--out DIR]                             the end-to-end demo (make demo)
rwkvblocks serve --model DIR_OR_PRESET [--host 127.0.0.1] [--port 8000] OpenAI-compatible API + chat page at /
rwkvblocks --version                                                the package version
python -m rwkvblocks ...                                            the same command

Errors: every error of ours (``ValueError`` and its subclasses: ``CheckpointError``, ``ConfigError``,
``BackendUnavailableError``; ``OSError``: missing files, unwritable outputs, permissions; an unavailable
``--device``, checked before anything is built; running out of accelerator memory) prints exactly one line to
stderr, ``rwkvblocks <command>: error: <message>``, and exits 2, the code argparse uses for usage errors. A
message of several lines (torch's own, embedded in a ``CheckpointError``) is cut to its first line plus
``(more with --debug)``. ``--debug`` (before or after the command) re-raises instead, with the whole
traceback. Ctrl-C exits 130 without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

__all__ = ["main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def _check_output_dir(path: str, flag: str) -> None:
    """Refuse an output directory that cannot be created or written, before the (long) work that fills it."""
    from pathlib import Path

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory")
    parent = target
    while not parent.exists():  # the nearest existing ancestor: mkdir(parents=True) starts there
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(13, f"Permission denied (so no {flag} {path} in it)", str(parent))


def _convert(args: argparse.Namespace) -> int:
    from .models import VisualRWKV

    _check_output_dir(args.dst, "output directory")
    t0 = time.perf_counter()
    print(f"reading {args.src} (torch.load, weights_only=True) ...", flush=True)
    heads = {"vision_heads": args.vision_heads, "vision_config": args.vision_config}
    heads = {k: v for k, v in heads.items() if v is not None}
    model = VisualRWKV.from_upstream(args.src, dtype=DTYPES[args.dtype] if args.dtype else None, **heads)
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"  {cfg.lm.version}, {cfg.lm.num_layers} layers, C={cfg.lm.dim}, hybrid layers {list(cfg.hybrid_layers)}, "
        f"encoder {_encoder_label(cfg.encoder)} ({model.image_tokens} tokens), {params:,} parameters"
    )
    transformer = getattr(getattr(model.encoder, "visual", None), "transformer", None)
    if transformer is not None:  # an open_clip tower: say which head count it was built with, and why
        count = transformer.resblocks[0].attn.num_heads
        if args.vision_heads is not None:
            why = "from --vision-heads"
        elif args.vision_config is not None:
            why = f"from {args.vision_config}"
        else:
            why = "not given, so heads of 64 as in OpenAI CLIP; set it with --vision-heads N or --vision-config PATH"
        print(f"  vision tower: {count} attention heads of {transformer.width // count} ({why})")
    out = model.save_pretrained(args.dst, encoder_weights=not args.no_encoder_weights)
    print(f"wrote {out}/config.json and {out}/model.safetensors in {time.perf_counter() - t0:.1f} s")
    return 0


_TRAIN_DEFAULTS = {
    "preset": "visualrwkv_1b6_clipl336",
    "size": "1b6",
    "keep_checkpoints": 3,
    "workers": 0,
    "on_bad_sample": "raise",
    "device": "cpu",
    "pure_bf16": False,
    "pack": False,
    "resume": False,
    "strategy": "none",
    "group_by_length": False,
}
_TRAIN_RECIPE = (  # arguments that are TrainRecipe fields of the same name
    "batch_size", "micro_batch_size", "epochs", "lr_init", "lr_final", "warmup_steps", "betas", "eps",
    "weight_decay", "decay_matrices_only", "grad_clip", "activation_checkpointing", "log_every",
    "checkpoint_every", "seed",
)  # fmt: skip


def _train_options(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults, then the ``--config`` file with its ``--set`` overrides, then the flags given explicitly."""
    from .training.config import load_stage_config

    skip = {"run", "command", "debug", "config", "set"}
    options = {k: None for k in vars(args) if k not in skip} | {"prompt": None} | _TRAIN_DEFAULTS
    if args.config is not None or args.set:
        options.update(load_stage_config(args.config, args.set or ()).arguments())
    options.update({k: v for k, v in vars(args).items() if k not in skip and v is not None})
    for flag, key in (("--stage", "stage"), ("--data", "data"), ("--out", "out")):
        if options.get(key) is None:
            section = {"stage": "train.stage", "data": "data.json", "out": "output.dir"}[key]
            raise ValueError(f"{flag} is required (or {section} in the --config file)")
    for key in ("steps", "batch_size", "micro_batch_size", "keep_checkpoints", "checkpoint_every"):
        value = options.get(key)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive int, got {value}")
    if options.get("epochs") is not None and not options["epochs"] > 0:
        raise ValueError(f"--epochs must be > 0, got {options['epochs']}")
    if options["workers"] < 0:
        raise ValueError(f"--workers must be >= 0, got {options['workers']}")
    from .training.distributed import STRATEGIES, launched_by_torchrun

    if options["strategy"] not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {options['strategy']!r}")
    if options["strategy"] != "none" and not launched_by_torchrun():
        raise ValueError(
            f"--strategy {options['strategy']} runs one process per rank: launch it with torchrun (RANK, WORLD_SIZE "
            f"and LOCAL_RANK set), e.g. torchrun --nproc-per-node 2 -m assemblies.cli train ... --strategy "
            f"{options['strategy']}"
        )
    if options["group_by_length"] and options["pack"]:
        raise ValueError("--group-by-length goes without --pack (packed rows have no padding to save)")
    return argparse.Namespace(**options)


def _save_trained(model, directory: str, state: dict | None):
    """``model.save_pretrained(directory)``; with ``state`` (gathered whole from FSDP2 shards) those weights."""
    if state is None:
        return model.save_pretrained(directory)
    from .models.formats.pretrained import write_pretrained

    config = {"model": model.config.to_dict(), "data": model.data_config.to_dict()}
    return write_pretrained(directory, config, state, encoder_weights=True)


def _train(args: argparse.Namespace) -> int:
    """``rwkvblocks train``: see the subparser; every argument is checked before the model is built."""
    import json
    from pathlib import Path

    from rwkvblocks.prompting import SkipReport

    from ._io import atomic_file
    from .models import VisualRWKV, create_assembly
    from .training import data_loader, make_dataset, recipe, train
    from .training.data import usable_epochs
    from .training.distributed import full_state_dict

    opts = _train_options(args)
    _check_device(opts.device)
    _check_output_dir(opts.out, "--out")
    device = torch.device(opts.device)
    rank = int(os.environ.get("RANK", 0)) if opts.strategy != "none" else 0
    if opts.strategy != "none" and device.type == "cuda":  # one GPU per rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if opts.dtype == "fp16":
        raise ValueError(
            "--dtype fp16: training in fp16 needs a gradient scaler, which train does not have (the weights would "
            "turn NaN); use --dtype bf16 (bf16 autocast, fp32 master weights)"
        )
    if opts.pure_bf16 and opts.dtype != "bf16":
        raise ValueError("--pure-bf16 goes with --dtype bf16")
    if opts.encoder_checkpoint is not None and not Path(opts.encoder_checkpoint).is_file():
        raise FileNotFoundError(2, "No such file (--encoder-checkpoint)", opts.encoder_checkpoint)
    changes = {k: getattr(opts, k) for k in _TRAIN_RECIPE if getattr(opts, k, None) is not None}
    data_changes = {k: getattr(opts, k) for k in ("context_length", "prompt") if getattr(opts, k, None) is not None}
    if data_changes:
        changes["data_changes"] = data_changes
    plan = recipe(opts.stage, opts.size, **changes)  # checks the batch sizes, epochs, rates (ValueError)
    if opts.steps is not None and plan.warmup_steps >= opts.steps:
        raise ValueError(f"warmup_steps {plan.warmup_steps} must be fewer than --steps {opts.steps}")
    if opts.dtype == "bf16":  # mixed precision: fp32 master weights, bf16 autocast compute (--pure-bf16: the old way)
        precision, dtype = ("bf16-pure", torch.bfloat16) if opts.pure_bf16 else ("bf16-autocast", torch.float32)
    else:
        precision, dtype = "fp32", DTYPES[opts.dtype] if opts.dtype else None
    torch.manual_seed(plan.seed)  # the same random initialisation (of frozen parts too) when a run is resumed
    overrides = {"tokenizer": opts.tokenizer} if opts.tokenizer else {}
    if opts.init:
        # --encoder-checkpoint: the encoder from that file, not from the directory
        model = VisualRWKV.from_pretrained(
            opts.init,
            device=device,
            dtype=dtype,
            encoder_weights=opts.encoder_checkpoint is None,
            encoder_checkpoint=opts.encoder_checkpoint,
        )
        if overrides:
            model.data_config = model.data_config.replace(**overrides)
    else:
        model = create_assembly(opts.preset, init_lm=opts.init_lm, device=device, dtype=dtype, **overrides)
        if opts.encoder_checkpoint is not None:  # loaded into the encoder; the path stays out of config.json
            model._rebuild_encoder(device, next(model.proj.parameters()).dtype, opts.encoder_checkpoint)
    data = plan.data_for(model.data_config)
    dataset = make_dataset(
        data,
        opts.data,
        opts.images,
        image_transform=model.encoder.transform.per_image,
        vocab_size=model.lm.vocab_size,
        on_bad_sample=opts.on_bad_sample,
    )
    if len(dataset) == 0:
        raise ValueError(f"--data {opts.data}: no samples")
    if opts.pack and (model.config.hybrid_layers or model.config.pad_multiple > 1):
        raise ValueError("--pack: packed rows need a model without TinyAttention layers and with pad_multiple 1")
    loader = data_loader(
        dataset,
        data,
        image_tokens=model.image_tokens,
        batch_size=plan.micro_batch_size,
        num_workers=opts.workers,
        pack=opts.pack,
        group_by_length=opts.group_by_length,
        # shuffled by a generator of its own, seeded: the order a resumed run replays is the order of the first run
        # (and the same on every rank: each walks the same global stream of micro-batches)
        generator=torch.Generator().manual_seed(plan.seed),
    )
    report = SkipReport()
    epochs = usable_epochs(loader, report, source=f"--data {opts.data}")  # a pass of only bad samples stops the run

    if rank == 0:
        print(f"{opts.stage}: {len(dataset)} samples, {data}, {plan}", flush=True)
    checkpoints = Path(opts.out) / "checkpoints"
    try:
        losses = train(
            model,
            epochs,
            plan,
            steps=opts.steps,
            micro_batches_per_epoch=len(loader),
            precision=precision,
            checkpoint_dir=checkpoints if plan.checkpoint_every or opts.resume else None,
            checkpoint_every=plan.checkpoint_every,
            keep=opts.keep_checkpoints,
            resume=opts.resume,
            strategy=opts.strategy,
        )
        # FSDP2 shards the parameters in place: gather them whole (a collective: on every rank) for rank 0 to save
        state = full_state_dict(model) if opts.strategy == "fsdp2" else None
        if rank != 0:
            return 0
        out = _save_trained(model, opts.out, state)
    finally:
        if opts.strategy != "none" and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    log = {
        "stage": opts.stage,
        "precision": precision,
        "seed": plan.seed,
        "recipe": plan.to_dict(),
        "log_every": plan.log_every,
        "checkpoint_every": plan.checkpoint_every,
        "data": data.to_dict(),
        "losses": losses,
        "skipped": report.summary(),
    }
    with atomic_file(Path(out) / f"train_{opts.stage}.json") as f:
        f.write(json.dumps(log, indent=2).encode())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; {report.summary()}; saved to {out}")
    return 0


def _load_model(spec: str, device: str, dtype: str | None):
    """A ``save_pretrained`` directory, or a preset name (random weights, for trying the command out)."""
    from pathlib import Path

    from .models import VisualRWKV, create_assembly, list_assemblies

    torch_dtype = DTYPES[dtype] if dtype else None
    if Path(spec).is_dir():
        return VisualRWKV.from_pretrained(spec, device=device, dtype=torch_dtype), Path(spec).name
    if spec in list_assemblies():
        print(f"note: {spec} is a preset: random weights (pass a save_pretrained directory for a trained model)")
        return create_assembly(spec, device=device, dtype=torch_dtype).eval(), spec
    raise ValueError(f"--model {spec!r} is neither a save_pretrained directory nor a preset (rwkvblocks list)")


def _sampling(args: argparse.Namespace, model):
    from .models.config import default_sampling

    return default_sampling(
        model.data_config,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )


def _chat(args: argparse.Namespace) -> int:
    from .models.generation import ChatSession

    model, _ = _load_model(args.model, args.device, args.dtype)
    session = ChatSession(model, _sampling(args, model), compile=args.compile)
    if args.image:
        session.set_image(args.image)

    def answer(question: str) -> None:
        for piece in session.ask(question):
            print(piece, end="", flush=True)
        print()

    if args.question:
        answer(args.question)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat: type a question; /image PATH, /reset, /quit", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            print("(conversation reset)", flush=True)
        elif line.startswith("/image"):
            path = line[len("/image") :].strip()
            try:
                session.set_image(path or None)
            except (OSError, ValueError) as err:  # an unreadable image is named, the conversation goes on
                print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
                continue
            print(f"(new conversation about {path})" if path else "(no image)", flush=True)
        else:
            if interactive:
                print("> ", end="", flush=True)
            answer(line)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .evaluation import Question, answer_questions
    from .evaluation.records import read_jsonl

    model, model_id = _load_model(args.model, args.device, args.dtype)
    questions = []
    for n, q in read_jsonl(args.questions, "questions file"):
        missing = [k for k in ("question_id", "text") if k not in q]
        if missing:
            raise ValueError(f"{args.questions}:{n}: missing {', '.join(missing)}")
        questions.append(Question(q["question_id"], q["text"], q.get("image") or None))
    counts = answer_questions(
        model,
        questions,
        args.out,
        config=_sampling(args, model),
        images=args.images,
        batch_size=args.batch_size,
        model_id=model_id,
        compile=args.compile,
    )
    print(f"{counts.questions} questions, {counts.skipped} already answered in {args.out}", flush=True)
    print(f"wrote {counts.written} answers to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, result_table

    model, model_id = _load_model(args.model, args.device, args.dtype)
    out = args.out or f"eval/{model_id}/{args.benchmark}"
    result = evaluate(
        model.eval(),
        args.benchmark,
        args.questions,
        images=args.images,
        annotations=args.annotations,
        mode=args.mode,
        out=out,
        batch_size=args.batch_size,
        limit=args.limit,
        config=_sampling(args, model),
        model_id=model_id,
        compile=args.compile,
    )
    print(result_table(result))
    print(f"answers in {out}/{result['files']['answers']}, result in {out}/result_{args.mode}.json")
    return 0


def _score(args: argparse.Namespace) -> int:
    from .evaluation import result_table, score_file, write_result

    result = score_file(args.benchmark, args.answers, annotations=args.annotations, questions=args.questions)
    print(result_table(result))
    if args.out:
        print(f"result in {write_result(result, args.out)}")
    return 0


_TIMM_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H", "giant": "g", "gigantic": "G"}


def _open_clip_vision_cfg(name: str) -> dict | None:
    """open_clip's ``vision_cfg`` for ``name``, read from its model_configs JSON without importing open_clip."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")  # locates the package, imports nothing
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model_configs" / f"{name}.json"
    try:
        return json.loads(path.read_text())["vision_cfg"]
    except (OSError, ValueError, KeyError):
        return None


def _encoder_label(c) -> str:
    """What the encoder really is, from its configuration alone (nothing built).

    open_clip: its model name, or, when ``vision_overrides`` reshape the tower, ``ViT LAYERSxWIDTH/PATCH@SIZE``
    (the values open_clip builds: its config merged with the overrides). timm: ``SIZE/PATCH@IMG`` read from
    the timm name (``vit_large_patch14...`` -> ``L/14``), ``DEPTHxWIDTH/PATCH@IMG`` when ``depth``/``embed_dim``
    are overridden. ``"concat"``: each tower as ``name label``, joined by ``+``.
    """
    import re

    if c.kind == "concat":
        return "+".join(f"{name} {_encoder_label(tower)}" for name, tower in c.towers())
    options = dict(c.options)
    if c.kind == "open_clip":
        overrides = dict(options.get("vision_overrides") or {})
        shape = ("layers", "width", "patch_size", "image_size")
        if not any(k in overrides for k in shape):
            return c.name if not overrides else f"{c.name} (modified: {', '.join(sorted(overrides))})"
        v = {**(_open_clip_vision_cfg(c.name) or {}), **overrides}
        if not all(k in v for k in shape):
            return f"{c.name} (modified: {', '.join(sorted(overrides))})"
        size = v["image_size"]
        size = size if isinstance(size, int) else "x".join(map(str, size))
        return f"ViT {v['layers']}x{v['width']}/{v['patch_size']}@{size}"
    m = re.search(r"vit_([a-z0-9]+)_patch(\d+)", c.name)  # timm: vit_large_patch14_reg4_dinov2, ..._siglip_384
    if m is None:
        return c.name
    size, patch = _TIMM_SIZES.get(m.group(1), m.group(1)), options.get("patch_size", m.group(2))
    if "depth" in options or "embed_dim" in options:
        size = f"{options.get('depth', '?')}x{options.get('embed_dim', '?')}"
    default = re.search(r"_(\d+)$", c.name)
    img = options.get("img_size", default and default.group(1))
    if isinstance(img, (list, tuple)):
        img = "x".join(map(str, img))
    return f"{size}/{patch}" + (f"@{img}" if img else "")


def _list(args: argparse.Namespace) -> int:
    from .models import create_assembly, get_assembly_config, list_assemblies

    names = list_assemblies(args.pattern)
    if not names:
        print(f"no preset matches {args.pattern!r}", file=sys.stderr)
        return 1
    rows = []
    for name in names:
        c, data = get_assembly_config(name)
        lm = f"{c.lm.version} L{c.lm.num_layers} C{c.lm.dim}"
        scan = c.scan if isinstance(c.scan, str) else "custom"
        hybrid = ",".join(map(str, c.hybrid_layers)) or "-"
        counts = ""
        if args.params:  # built on the meta device: shapes only, no memory; millions, to the thousand
            model = create_assembly(name, device="meta")
            total, lm_total, encoder_total = (
                sum(p.numel() for p in m.parameters()) / 1e6 for m in (model, model.lm, model.encoder)
            )
            counts = f" {total:>12,.3f} {lm_total:>10,.3f} {encoder_total:>12,.3f}"
        rows.append((name, lm, scan, data.prompt, _encoder_label(c.encoder), c.encoder.cls, hybrid, data.loss, counts))
    width = max(18, *(len(r[4]) for r in rows))
    extra = f" {'params (M)':>12} {'LM (M)':>10} {'encoder (M)':>12}" if args.params else ""
    head = f"{'preset':<34} {'lm':<18} {'scan':<6} {'prompt':<12} {'encoder':<{width}} {'cls':<5} hybrid  loss  "
    print((head + extra).rstrip())
    for name, lm, scan, prompt, encoder, cls, hybrid, loss, counts in rows:
        line = f"{name:<34} {lm:<18} {scan:<6} {prompt:<12} {encoder:<{width}} {cls:<5} {hybrid:<7} {loss:<6}{counts}"
        print(line.rstrip())
    return 0


def _info(args: argparse.Namespace) -> int:
    from rwkvblocks.info import report

    print(report())
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.task == "shapes":
        from .demo.shapes import run_shapes_demo

        return run_shapes_demo(
            args.out,
            types=args.types.split(","),
            n_train=args.n_train,
            caption_steps=args.caption_steps,
            qa_steps=args.steps,
            dim=args.dim,
            layers=args.layers,
            threshold=args.threshold,
            seed=args.seed,
            record=args.record,
            position=args.position,
        )
    from .demo import run_demo

    return run_demo(steps=args.steps, out=args.out, seed=args.seed, record=args.record)


def _serve(args: argparse.Namespace) -> int:
    try:
        from .serving import serve
    except ImportError as err:
        raise ValueError(f"serving needs the serve extra (pip install 'rwkvblocks[serve]'): {err}") from None
    model, model_id = _load_model(args.model, args.device, args.dtype)
    options = {k: getattr(args, k) for k in ("max_batch", "state_cache_mb", "prefill_chunk", "max_image_bytes")}
    options.update({k: getattr(args, k) for k in ("max_image_pixels", "image_dir", "max_body_bytes", "compile")})
    print(f"serving {model_id} on http://{args.host}:{args.port}/ (chat page) and /v1 (OpenAI API)", flush=True)
    serve(model.eval(), args.name or model_id, host=args.host, port=args.port, api_key=args.api_key, **options)
    return 0


# the errors a user can cause (bad input, files, devices, memory): one line and exit 2; the rest are bugs
_OURS = (ValueError, OSError, torch.cuda.OutOfMemoryError)


def _one_line(err: BaseException) -> str:
    """``err``'s message on one line: an ``OSError`` as ``path: reason``, else the first non-empty line."""
    if isinstance(err, OSError) and err.strerror:
        names = [os.fspath(n) for n in (err.filename, err.filename2) if n is not None]
        text = f"{' -> '.join(names)}: {err.strerror}" if names else err.strerror
    elif isinstance(err, torch.cuda.OutOfMemoryError):
        text = f"out of memory: {str(err).strip()}"
    else:
        text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    return f"{first} (more with --debug)" if len(lines) > 1 else first


def _check_device(spec: str) -> None:
    """Refuse a ``--device`` that this machine does not have, before anything is loaded or built."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {spec!r} is not a torch device ({_one_line(err)})") from None
    if device.type in ("cpu", "meta"):
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"--device {spec}: CUDA is not available ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return
    backend = getattr(torch.backends, device.type, None) if device.type == "mps" else getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {spec}: {device.type} is not available on this machine; use --device cpu")


def main(argv: list[str] | None = None) -> int:
    from rwkvblocks import __version__

    parser = argparse.ArgumentParser(prog="rwkvblocks", description="rwkvblocks: VisualRWKV building blocks")
    parser.add_argument("--version", action="version", version=f"rwkvblocks {__version__}")
    debug_help = "on an error, show the whole traceback instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert an upstream VisualRWKV .pth into a save_pretrained directory")
    p.add_argument("src", help="upstream checkpoint (.pth)")
    p.add_argument("dst", help="output directory (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype (default: the checkpoint's)")
    p.add_argument("--no-encoder-weights", action="store_true", help="leave the frozen encoder's weights out")
    p.add_argument(
        "--vision-heads",
        type=int,
        metavar="N",
        help="attention heads of the file's CLIP tower (not stored in it; default: heads of 64, with a warning)",
    )
    p.add_argument(
        "--vision-config",
        metavar="PATH",
        help="the tower's Hugging Face config.json (or its directory): the head count is read from it",
    )
    p.set_defaults(run=_convert)
    p = sub.add_parser(
        "train",
        help="run one stage of the paper's recipe on LLaVA-format data",
        description="Run one training stage. Every setting can come from a stage config (--config FILE or a shipped "
        "name; --set SECTION.FIELD=VALUE overrides one of its fields); flags given explicitly win over both.",
    )
    p.add_argument("--config", metavar="FILE", help="stage config (TOML; see assemblies/training/config.py)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one field of the config (type-checked; repeatable), e.g. train.lr_init=2e-5",
    )
    p.add_argument("--preset", help="assembly to build (ignored with --init; default visualrwkv_1b6_clipl336)")
    p.add_argument("--init", help="continue from a save_pretrained directory (stage 2 after stage 1)")
    p.add_argument("--init-lm", help="BlinkDL RWKV .pth to start the language model from (stage 1)")
    p.add_argument(
        "--encoder-checkpoint",
        metavar="PATH",
        help="local image-encoder weights to load (with --init: instead of the directory's); not stored in the output",
    )
    p.add_argument("--stage", choices=["alignment", "instruction"], help="required, here or as train.stage")
    p.add_argument("--size", choices=["1b6", "3b", "7b"], help="selects the stage-2 learning rates (default 1b6)")
    p.add_argument("--data", help="LLaVA-1.5 JSON file (required, here or as data.json)")
    p.add_argument("--images", help="image root folder")
    p.add_argument("--out", help="output directory (save_pretrained + train_<stage>.json; or output.dir)")
    p.add_argument("--tokenizer", choices=["world", "byte"], help="default: the model's data configuration")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the recipe's epochs)")
    p.add_argument("--batch-size", type=int, help="samples per optimiser step (a multiple of --micro-batch-size)")
    p.add_argument("--micro-batch-size", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--context-length", type=int)
    p.add_argument("--lr-init", type=float)
    p.add_argument("--lr-final", type=float)
    p.add_argument("--device", help="default cpu")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="compute dtype (default fp32); bf16: bf16 autocast with fp32 master weights; fp16 is refused",
    )
    p.add_argument(
        "--pure-bf16",
        action="store_true",
        default=None,
        help="with --dtype bf16: bf16 weights stepped directly, no fp32 master copy (small updates are lost)",
    )
    p.add_argument("--seed", type=int, help="seeds initialisation and the data order (default 0)")
    p.add_argument(
        "--pack",
        action="store_true",
        default=None,
        help="pack each micro-batch's samples into rows of the context length (cu_seqlens; no padding computed)",
    )
    p.add_argument("--checkpoint-every", type=int, help="write a training checkpoint every N steps to OUT/checkpoints")
    p.add_argument("--keep-checkpoints", type=int, help="training checkpoints kept (default 3)")
    p.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="go on from the newest checkpoint in OUT/checkpoints (same arguments; starts afresh if none)",
    )
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--on-bad-sample", choices=["raise", "skip"], help="default raise")
    p.add_argument(
        "--strategy",
        choices=["none", "ddp", "fsdp2"],
        help="data parallelism under torchrun (one process per rank; cuda: cuda:LOCAL_RANK): DDP or FSDP2; "
        "rank 0 saves (default none)",
    )
    p.add_argument(
        "--group-by-length",
        action="store_true",
        default=None,
        help="batch samples of similar length together (less padding; batches still shuffled, seeded)",
    )
    p.set_defaults(run=_train)
    for name, helptext, run in (
        ("chat", "answer a question about an image, or chat on stdin (/image PATH, /reset)", _chat),
        ("generate", "answer a LLaVA question file (.jsonl) into an answers file, resumable", _generate),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, help="save_pretrained directory or preset name")
        p.add_argument("--device", default="cpu")
        p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype (default: the stored one)")
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--seed", type=int)
        p.add_argument(
            "--compile", action="store_true", help="compile the decode step (torch.compile; the first step compiles)"
        )
        if name == "chat":
            p.add_argument("question", nargs="?", help="one question (default: read questions from stdin)")
            p.add_argument("--image", help="image file the conversation is about")
        else:
            p.add_argument("--questions", required=True, help="JSON lines: question_id, image, text")
            p.add_argument("--images", help="folder the questions' image paths are relative to")
            p.add_argument("--out", required=True, help="answers file (JSON lines); existing answers are kept")
            p.add_argument("--batch-size", type=int, default=8)
        p.set_defaults(run=run)
    names = "vqav2, gqa, textvqa, pope, mme, scienceqa, mmbench or mmbench_cn"  # the two evaluation commands
    p = sub.add_parser("eval", help="answer a benchmark's LLaVA question file and score it (LLaVA-1.5 protocol)")
    p.add_argument("--model", required=True, help="save_pretrained directory or preset name")
    p.add_argument("--benchmark", required=True, help=names)
    p.add_argument("--questions", required=True, help="the benchmark's question file (.jsonl, .json or .tsv)")
    p.add_argument("--images", help="folder the questions' image paths are relative to (MMBench: not needed)")
    p.add_argument("--annotations", help="ground truth file or folder (default: none, answers only; MMBench: the tsv)")
    p.add_argument("--mode", choices=["generate", "rank"], default="generate", help="rank: most likely choice")
    p.add_argument("--out", help="output folder (default: eval/MODEL/BENCHMARK)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype (default: the stored one)")
    p.add_argument("--compile", action="store_true", help="compile the decode step")
    p.set_defaults(run=_eval, temperature=0.0, top_p=1.0, top_k=0, seed=None)
    p = sub.add_parser("score", help="score an answers file (ours, LLaVA's or upstream VisualRWKV's)")
    p.add_argument("--benchmark", required=True, help=names)
    p.add_argument("--answers", required=True, help="answers file (JSON lines: question_id, text, ...)")
    p.add_argument("--annotations", help="ground truth file or folder (MMBench: default the --questions tsv)")
    p.add_argument("--questions", help="the question file, for answers that do not carry their question")
    p.add_argument("--out", help="also write the result JSON here")
    p.set_defaults(run=_score)
    p = sub.add_parser("list", help="list the presets")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--params", action="store_true", help="count parameters (each preset built on the meta device)")
    p.set_defaults(run=_list)
    p = sub.add_parser("info", help="ops, backends and devices on this machine")
    p.set_defaults(run=_info)
    p = sub.add_parser("demo", help="train a tiny VisualRWKV on synthetic images, save, reload and answer")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per stage")
    p.add_argument("--out", help="keep the run directory here (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", help="also write the result table to this markdown file")
    p.add_argument(
        "--task",
        choices=["colour", "shapes"],
        default="colour",
        help="colour: one square, name its colour (the default); shapes: questions about shapes on a grid "
        "(assemblies.synthetic; --steps are the question-stage steps)",
    )
    p.add_argument("--types", default="colour_at", help="shapes: comma-separated question types")
    p.add_argument("--n-train", type=int, default=8000, help="shapes: training images")
    p.add_argument("--caption-steps", type=int, default=0, help="shapes: steps of the caption stage")
    p.add_argument("--dim", type=int, default=128, help="shapes: width of the language model")
    p.add_argument("--layers", type=int, default=2, help="shapes: depth of the language model")
    p.add_argument("--threshold", type=float, default=0.9, help="shapes: pass mark of the test accuracy")
    p.add_argument(
        "--position",
        choices=["learnable", "sin_cos_2d"],
        default="learnable",
        help="shapes: encoder position embedding",
    )
    p.set_defaults(run=_demo)
    p = sub.add_parser("serve", help="serve a model: OpenAI-compatible API (images, streaming) and a chat page")
    p.add_argument("--model", required=True, help="save_pretrained directory or preset name")
    p.add_argument("--name", help="model id in the API (default: the directory or preset name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype (default: the stored one)")
    p.add_argument("--max-batch", type=int, default=16, help="requests prefilling or decoding at once")
    p.add_argument("--prefill-chunk", type=int, default=256, help="prompt tokens prefilled between decode steps")
    p.add_argument("--state-cache-mb", type=float, default=256, help="prefix-state cache budget (0: off)")
    p.add_argument("--max-image-bytes", type=int, default=8 << 20, help="encoded image size limit")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000, help="width x height limit")
    p.add_argument("--max-body-bytes", type=int, default=16 << 20, help="request body size limit")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1/")
    p.add_argument("--image-dir", help="folder that file:// image URLs may point into (default: none allowed)")
    p.add_argument("--compile", action="store_true", help="compile the decode step")
    p.set_defaults(run=_serve)
    for p in sub.choices.values():  # --debug after the command too; SUPPRESS keeps a --debug before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            _check_device(args.device)
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return 130  # 128 + SIGINT, as a shell reports it; quietly
    except BrokenPipeError:  # stdout closed early (`rwkvblocks list | head -1`): not an error of the command
        if args.debug:
            raise
        with contextlib.suppress(OSError, ValueError):  # and no second complaint when Python flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except _OURS as err:
        if args.debug:
            raise
        print(f"rwkvblocks {args.command}: error: {_one_line(err)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
