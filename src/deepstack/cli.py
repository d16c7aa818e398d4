"""The ``deepstack`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub from the command line


def _build(args) -> None:
    from .model.builder import build_model

    settings = {
        "stack_mode": args.mode,
        "hires_scale": args.hires_scale,
        "stack_start_layer": args.start_layer,
        "stack_interval": args.interval,
        "stack_sampling": args.sampling,
        "num_stack_layers": args.stack_layers,
        "image_grid_pinpoints": args.grid_pinpoints,
    }
    import torch

    torch.manual_seed(args.seed)  # the random parts (projector, tiny towers) are reproducible
    model, processor = build_model(args.vision, args.llm, **settings)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    config = model.config
    image_tokens = config.image_seq_length
    if config.image_grid_pinpoints is not None:  # each image's count is set by its size (docs/method.md)
        most = max(config.num_image_tokens(height, width) for height, width in config.image_grid_pinpoints)
        image_tokens = f"up to {most} (DeepStack-HD: set by each image's size)"
    print(
        f"saved a DeepStack model to {args.out}: stack_mode={config.stack_mode}, {config.num_stacks} stacks, "
        f"{image_tokens} image tokens per image, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    )


def _pinpoints(text: str) -> list[list[int]]:
    """``--grid-pinpoints 32x64,64x64`` as ``[[32, 64], [64, 64]]`` (height x width in pixels)."""
    try:
        return [[int(side) for side in item.lower().split("x", 1)] for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give resolutions as HEIGHTxWIDTH pixels separated by commas, e.g. 336x672,672x672"
        ) from None


def _generate(args) -> None:
    from .model.builder import load_pretrained
    from .model.processing import load_image
    from .model.video_file import load_video
    from .infer.generate import answer
    from .utils.device import pick_device, pick_dtype

    # check the input before the (slower) model load; a video becomes one image, its frame mosaic (docs/video.md)
    image = load_image(args.image) if args.image is not None else load_video(args.video)
    device = pick_device(args.device)
    model, processor = load_pretrained(args.model)
    dtype = pick_dtype(args.dtype, device)
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    kwargs = {"do_sample": True, "temperature": args.temperature} if args.sample else {"do_sample": False}
    print(answer(model, processor, [image], [args.question], max_new_tokens=args.max_new_tokens, **kwargs)[0])


def _train(args) -> None:
    from .train.config import load_config
    from .train.loop import train

    config = load_config(args.config, args.overrides + (["--data.skip_invalid=true"] if args.skip_invalid else []))
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f}s, final loss {result.final_loss:.4f}; "
        f"model in {result.output_dir} (loss curve: {result.output_dir / 'loss.png'})"
    )


def _validate_data(args) -> None:
    from .train.config import load_config
    from .train.data import validate
    from .train.loop import load_base_model

    config = load_config(args.config, args.overrides)
    _, processor = load_base_model(config.model)
    items, problems = validate(config.data.sources, processor, config.stage, config.data.max_length)
    for problem in problems:
        print(problem)
    valid = sum(len(per_source) for per_source in items)
    print(f"{valid} valid record(s), {len(problems)} invalid")
    if problems:
        raise SystemExit(1)


def _make_data(args) -> None:
    from .research.recipe import FULL, QUICK
    from .research.tasks import get_task

    task = get_task(args.task)
    sizes = (QUICK if args.quick else FULL).sizes
    task.make_data(args.out, seed=args.seed, sizes=sizes)
    print(f"wrote {sizes} images of the {args.task} task with fine and coarse questions to {args.out}")
    if args.probe:
        probe, what = ((task.probe_legibility, "digit") if args.task == "finedetail"
                       else (task.probe, "corner counts, chance 20%"))
        scores = probe(args.out, seed=args.seed)
        (Path(args.out) / "probe.json").write_text(json.dumps(scores, indent=2))
        print(f"image-only probe, {what} accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in scores.items()))


def _demo(args) -> None:
    from .research.demo import demo

    demo(args.out, quick=args.quick, llm=args.llm, seed=args.seed, steps=args.steps, workers=args.workers)


def _lab(args) -> None:
    from dataclasses import replace

    from .research.recipe import FULL, QUICK
    from .research.lab import lab, task_of
    from .research.tasks import DEFAULT_TASK

    task = args.task or task_of(args.groups) or DEFAULT_TASK
    recipe = (QUICK if args.quick else FULL).with_steps(args.steps).with_task(task)
    curved = task != DEFAULT_TASK or args.stop_on_plateau  # a plateau is one of the learning curve's
    curve_every = args.curve_every or (max(1, recipe.steps // 16) if curved else None)
    recipe = replace(recipe, curve_every=curve_every, time_phases=args.time_phases, compile=args.compile,
                     stop_on_plateau=args.stop_on_plateau)
    lab(args.out, groups=args.groups, seeds=tuple(args.seeds), recipe=recipe, report_dir=args.report,
        command="deepstack " + " ".join(a for a in args.argv if a != "--report-only"), workers=args.workers,
        train=not args.report_only)


def _bench(args) -> None:
    from .research.bench import plot, report, run

    if args.analytic:  # FLOPs at the paper's scale from config shapes: no weights, no device
        from .research.bench.analytic import write_analytic

        write_analytic(args.out)
        print((Path(args.out) / "analytic.md").read_text())
        return
    if args.settings:  # the lab's stack settings at real shapes: paired LLM prefill ratios to none
        from .research.bench.settings import report_settings, run_settings

        if args.report_only:  # redo settings.md from OUT/settings.json
            results = json.loads((Path(args.out) / "settings.json").read_text())
            (Path(args.out) / "settings.md").write_text(report_settings(results))
        else:
            run_settings(args.out, rounds=args.rounds, threads=args.threads,
                         command="deepstack " + " ".join(args.argv))
        print((Path(args.out) / "settings.md").read_text())
        return
    if args.hd:  # DeepStack-HD at real shapes: context lengths, paired LLM prefill ratios
        from .research.bench.hd import report_hd, run_hd

        if args.report_only:  # redo hd.md from OUT/hd.json
            results = json.loads((Path(args.out) / "hd.json").read_text())
            (Path(args.out) / "hd.md").write_text(report_hd(results))
        else:
            run_hd(args.out, rounds=args.rounds, threads=args.threads, command="deepstack " + " ".join(args.argv))
        print((Path(args.out) / "hd.md").read_text())
        return
    if args.serving:  # the serving engine's speed: batched throughput, time to first token llm vs none
        from .research.bench import serving

        if args.report_only:  # redo serving.md from OUT/serving.json
            results = json.loads((Path(args.out) / "serving.json").read_text())
            (Path(args.out) / "serving.md").write_text(serving.report(results))
        else:
            serving.run(args.out, rounds=args.rounds, max_tokens=args.max_tokens, threads=args.threads,
                        command="deepstack " + " ".join(args.argv))
        print((Path(args.out) / "serving.md").read_text())
        return
    if args.report_only:  # redo bench.md and bench.png from the bench.json of an earlier (maybe partial) run
        results = json.loads((Path(args.out) / "bench.json").read_text())
        (Path(args.out) / "bench.md").write_text(report(results))
        plot(results, Path(args.out) / "bench.png")
    else:
        results = run(args.out, repeats=args.repeats, scales=tuple(args.scales), quick=args.quick)
    print((Path(args.out) / "bench.md").read_text())
    print(f"bench: {len(results['modes'])} modes; bench.md, bench.json and bench.png in {args.out}")


def _eval(args) -> None:
    from .eval.benchmark import compare, run_benchmark
    from .eval.parallel import launch, processes
    from .model.builder import load_pretrained
    from .utils.device import pick_device, pick_dtype

    out = Path(args.out or f"runs/eval/{args.task}")
    folders = [out / Path(model).name for model in args.model] if len(args.model) > 1 else [out]
    if len(set(folders)) != len(folders):
        raise ValueError(f"two --model folders have the same name; their runs would share a folder under {out}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch and torchrun
    if args.processes < 1 or (launched > 1 and args.processes not in (1, launched)):
        raise ValueError(f"--processes {args.processes}: give a number of processes of at least 1 (under accelerate "
                         f"launch or torchrun, which started {launched}, leave it out)")
    if args.processes > 1 and launched == 1:
        return launch(args.processes, _without_option(args.argv, "--processes"))
    state = processes()
    device = state.device if state.num_processes > 1 and args.device == "auto" else pick_device(args.device)
    for path, folder in zip(args.model, folders):
        model, processor = load_pretrained(path)
        dtype = pick_dtype(args.dtype, device)
        model.to(device=device, dtype=dtype) if dtype else model.to(device)
        run_benchmark(model, processor, args.task, args.data, folder, limit=args.limit, batch_size=args.batch_size,
                      resume=args.resume, max_new_tokens=args.max_new_tokens, image_folder=args.image_folder)
        if state.is_main_process:
            print((folder / "results.md").read_text())
    if len(folders) > 1 and state.is_main_process:
        compare(folders, out)
        print((out / "results.md").read_text() + f"\nchart: {out / 'results.png'}")


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` and ``option=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def _score(args) -> None:
    from .eval.benchmark import score_predictions

    predictions = Path(args.predictions)
    out = Path(args.out or predictions.with_name(predictions.stem + "-scored"))
    score_predictions(args.task, args.data, predictions, out, limit=args.limit, image_folder=args.image_folder)
    print((out / "results.md").read_text())


def _make_eval_data(args) -> None:
    from .eval.samples import write_samples

    for task, data in write_samples(args.out, seed=args.seed).items():
        print(f"deepstack eval --model MODEL --task {task} --data {data}")


def _convert(args) -> None:
    from .convert import convert_deepstack_vl, convert_llava_hf, convert_llava_next_hf

    named = (("stack_mode", args.mode), ("hires_scale", args.hires_scale), ("stack_start_layer", args.start_layer),
             ("stack_interval", args.interval), ("stack_sampling", args.sampling),
             ("num_stack_layers", args.stack_layers))
    settings = {key: value for key, value in named if value is not None}
    common = {"max_shard_size": args.max_shard_size, "allow_pickle": args.allow_pickle}
    if args.format in ("llava-hf", "llava-next-hf"):
        convert = convert_llava_hf if args.format == "llava-hf" else convert_llava_next_hf
        out = convert(args.src, args.out, **common, **settings)
    elif settings:
        raise ValueError(f"deepstack-vl takes its settings from its config.json; drop {', '.join(settings)}")
    else:
        out = convert_deepstack_vl(args.src, args.out, vision_tower=args.vision_tower, **common)
    print(f"converted {args.src} ({args.format}) into a DeepStack model in {out}")


def _export(args) -> None:
    from .convert import export_llava_hf

    out = export_llava_hf(args.src, args.out, max_shard_size=args.max_shard_size)
    print(f"exported {args.src} as a transformers LLaVA model in {out}")


def _serve(args) -> None:
    from .serve import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("DEEPSTACK_API_KEY"),
          image_root=args.image_root, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
          device=args.device, dtype=args.dtype, allow_remote_images=args.allow_remote_images,
          max_images=args.max_images, max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
          max_body_bytes=args.max_body_bytes)


def _chat(args) -> None:
    from .serve.chat import chat

    chat(args.model, device=args.device, dtype=args.dtype, system=args.system, max_tokens=args.max_tokens,
         temperature=args.temperature)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="deepstack", description=__doc__, epilog="--debug (anywhere): show the traceback of an error"
    )
    commands = root.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="assemble a DeepStack model from a vision encoder and an LLM")
    build.add_argument("--vision", default="tiny-clip", help="local checkpoint dir, or tiny-clip / tiny-siglip")
    build.add_argument(
        "--llm", default="tiny-llama", help="local checkpoint dir or .gguf, smollm2-135m, or tiny-llama/qwen2/..."
    )
    build.add_argument("--mode", default="llm", help="stack_mode (none, llm, vit, ...)")
    build.add_argument("--hires-scale", type=int, default=2)
    build.add_argument("--start-layer", type=int, default=1)
    build.add_argument("--interval", type=int, default=1)
    build.add_argument("--sampling", default="2d_spatial")
    build.add_argument("--stack-layers", type=int, default=None, help="inject only the first K stacks (default: all)")
    build.add_argument(
        "--grid-pinpoints", type=_pinpoints, default=None, metavar="HxW,...",
        help="DeepStack-HD: the any-resolution grid's resolutions in pixels, multiples of the encoder's input size "
        "(e.g. 336x672,672x336,672x672; default: off)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised weights")
    build.add_argument("--out", required=True, help="directory to save the model and processor in")
    build.set_defaults(run=_build)

    generate = commands.add_parser("generate", help="answer a question about an image or a video")
    generate.add_argument("--model", required=True, help="a directory saved by `deepstack build` or training")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--image")
    source.add_argument("--video", help="a video file: 6 frames in a 2x3 mosaic, one square image (docs/video.md)")
    generate.add_argument("question")
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=0.7)
    generate.add_argument("--device", default="auto")
    generate.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    generate.set_defaults(run=_generate)

    for name, run, text in (
        ("train", _train, "train a DeepStack model from a YAML config (pretrain or finetune stage)"),
        ("validate-data", _validate_data, "check every record of a config's data and list the invalid ones"),
    ):
        command = commands.add_parser(name, help=text, description=text + ". Override any key with --section.key=value.")
        command.add_argument("config", help="the run's YAML file")
        command.add_argument(
            "--skip-invalid", action="store_true", help="skip invalid records (listed in the output folder)"
        )
        if name == "train":
            command.add_argument(
                "--resume", action="store_true", help="continue the run in output.dir from its newest checkpoint"
            )
            command.add_argument(
                "--overwrite", action="store_true", help="delete the run already in output.dir, then train"
            )
        command.set_defaults(run=run)
    make_data = commands.add_parser("make-data", help="write the fine-detail dataset (LLaVA format)")
    make_data.add_argument("out")
    make_data.add_argument("--task", default="finedetail", choices=["finedetail", "localdetail"],
                           help="the fine-detail task v3 or the local-detail task v4 (docs/finedetail.md)")
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--quick", action="store_true", help="a small dataset")
    make_data.add_argument("--probe", action="store_true", help="also measure legibility with an image-only CNN")
    make_data.set_defaults(run=_make_data)

    demo = commands.add_parser("demo", help="train none and llm models on the fine-detail task and compare them")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="small and fast (CI): a real train and eval, little data")
    demo.add_argument("--llm", default="tiny-llama", help="tiny-llama (from scratch) or smollm2-135m (pretrained)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=None, help="optimizer steps per model")
    demo.add_argument("--workers", type=int, default=None,
                      help="models trained at a time (default: 2 with --quick, else 1, as the published numbers)")
    demo.set_defaults(run=_demo)

    lab = commands.add_parser("lab", help="the paper's ablations (Tables 5-7, Fig. 3) on a synthetic task")
    lab.add_argument("--out", default="runs/lab", help="models, data and runs.jsonl (an interrupted lab resumes)")
    lab.add_argument("--groups", nargs="+", default=None,
                     help="finedetail: table7 table6 table5 fig3a fig3b fig3c; localdetail: those and v4_table5 v4_fig3 "
                          "v4_ceiling local_speed gate levels upgrade (default: every group of the task)")
    lab.add_argument("--task", choices=["finedetail", "localdetail"], default=None,
                     help="the task, one per lab (default: the one the groups are made for, else finedetail)")
    lab.add_argument("--curve-every", type=int, default=None,
                     help="validation accuracy every N steps, the learning curve (default: steps/16 on localdetail, "
                          "none on finedetail)")
    lab.add_argument("--stop-on-plateau", action="store_true",
                     help="stop each run once its validation fine accuracy has not risen a point above its best "
                          "for 3 curve points in a row: runs of their own that end sooner (docs/finedetail.md); turns "
                          "the learning curve on")
    lab.add_argument("--time-phases", action=argparse.BooleanOptionalAction, default=True,
                     help="measure where each run's time goes (set-up, data, vision, LLM, optimizer, evaluation) for "
                          "the report: the same runs")
    lab.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                     help="torch.compile each encoder and LLM layer for training: the same runs, faster steps "
                          "(docs/lab/step_options.md); --no-compile where torch.compile cannot run (no C++ compiler)")
    lab.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    lab.add_argument("--quick", action="store_true", help="the demo's quick recipe (small data, few steps)")
    lab.add_argument("--steps", type=int, default=None, help="optimizer steps per model (default: the demo's)")
    lab.add_argument("--report", default=None, help="folder for lab.md, lab.json and lab.png (default: --out)")
    lab.add_argument("--workers", type=int, default=1, help="runs at a time, in processes sharing the cores")
    lab.add_argument("--report-only", action="store_true", help="no training: the report of the runs done so far")
    lab.set_defaults(run=_lab)

    bench = commands.add_parser("bench", help="measure the cost of every stack_mode at real model shapes")
    bench.add_argument("--out", default="runs/bench")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--scales", type=int, nargs="+", default=[1, 2, 3, 4])
    bench.add_argument("--quick", action="store_true", help="skip the training step")
    bench.add_argument("--report-only", action="store_true",
                       help="rewrite bench.md/png from OUT/bench.json (with --serving: serving.md from serving.json)")
    bench.add_argument("--analytic", action="store_true", help="write OUT/analytic.md/json: FLOPs at paper scale")
    bench.add_argument("--serving", action="store_true", help="write OUT/serving.md/json: the engine's speed")
    bench.add_argument("--hd", action="store_true",
                       help="write OUT/hd.md/json: DeepStack-HD's context lengths and paired LLM prefill ratios")
    bench.add_argument("--settings", action="store_true",
                       help="write OUT/settings.md/json: paired LLM prefill ratios to none of the lab's stack settings")
    bench.add_argument("--rounds", type=int, default=3,
                       help="paired rounds of each --serving measure; with --hd, of global_hires_string/llm "
                            "(llm/none gets 3x as many); with --settings, of each setting / none")
    bench.add_argument("--max-tokens", type=int, default=32, help="answer length of the --serving throughput")
    bench.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's choice)")
    bench.set_defaults(run=_bench)

    from .eval.loaders import TASKS

    evaluate = commands.add_parser("eval", help="answer a benchmark's questions and score them (docs/eval.md)")
    evaluate.add_argument("--model", action="append", required=True, help="a saved model; repeat to compare models")
    evaluate.add_argument("--task", required=True, choices=list(TASKS))
    evaluate.add_argument("--data", required=True, help="the benchmark's folder or file (see docs/eval.md)")
    evaluate.add_argument("--image-folder", default=None, help="where the images are, if not where the data says")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N questions")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--max-new-tokens", type=int, default=32)
    evaluate.add_argument("--out", default=None, help="default: runs/eval/TASK")
    evaluate.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    evaluate.add_argument("--processes", type=int, default=1,
                          help="answer in N processes, each a shard (one per GPU; on a CPU they share the cores)")
    evaluate.set_defaults(run=_eval)

    score = commands.add_parser("score", help="score predictions made by any system (JSON lines), no model")
    score.add_argument("--task", required=True, choices=list(TASKS))
    score.add_argument("--data", required=True)
    score.add_argument("--predictions", required=True, help="JSON lines with question_id and prediction")
    score.add_argument("--image-folder", default=None)
    score.add_argument("--limit", type=int, default=None, help="the limit the predictions were made with")
    score.add_argument("--out", default=None, help="default: next to the predictions, NAME-scored/")
    score.set_defaults(run=_score)

    make_eval_data = commands.add_parser("make-eval-data", help="write small synthetic benchmarks in every format")
    make_eval_data.add_argument("out")
    make_eval_data.add_argument("--seed", type=int, default=0)
    make_eval_data.set_defaults(run=_make_eval_data)

    convert = commands.add_parser(
        "convert", help="turn a LLaVA, LLaVA-NeXT or DeepStack-VL checkpoint into a DeepStack model"
    )
    convert.add_argument("format", choices=["llava-hf", "llava-next-hf", "deepstack-vl"])
    convert.add_argument("src", help="the local checkpoint folder")
    convert.add_argument("--out", required=True)
    convert.add_argument("--mode", default=None, help="stack_mode of the result (llava-hf, llava-next-hf; default llm)")
    for flag in ("--hires-scale", "--start-layer", "--interval", "--stack-layers"):
        convert.add_argument(flag, type=int, default=None)
    convert.add_argument("--sampling", default=None)
    convert.add_argument("--vision-tower", default=None, help="deepstack-vl: a local CLIP folder when not in SRC")
    convert.add_argument("--max-shard-size", default="5GB")
    convert.add_argument("--allow-pickle", action="store_true", help="read *.bin/*.pt (weights only) as well")
    convert.set_defaults(run=_convert)

    export = commands.add_parser(
        "export", help="write a none-mode DeepStack model as a transformers LLaVA (HD: LLaVA-NeXT) folder"
    )
    export.add_argument("format", choices=["llava-hf"])
    export.add_argument("src")
    export.add_argument("--out", required=True)
    export.add_argument("--max-shard-size", default="5GB")
    export.set_defaults(run=_export)

    serve = commands.add_parser("serve", help="answer OpenAI chat completion requests over HTTP (docs/serve.md)")
    serve.add_argument("--model", required=True, help="a saved DeepStack model folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $DEEPSTACK_API_KEY)")
    serve.add_argument("--image-root", default=None, help="the only folder local image paths may name")
    serve.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    for flag, default in (("--max-batch-size", 8), ("--max-queue", 64), ("--max-images", 8),
                          ("--max-image-bytes", 20 * 2**20), ("--max-image-pixels", 64_000_000),
                          ("--max-body-bytes", 32 * 2**20)):
        serve.add_argument(flag, type=int, default=default)
    serve.add_argument("--device", default="auto")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    serve.set_defaults(run=_serve)

    chat = commands.add_parser("chat", help="talk to a model in the terminal: /image PATH, /reset, /save FILE")
    chat.add_argument("--model", required=True)
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    chat.set_defaults(run=_chat)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    args, unknown = parser().parse_known_args(argv)
    args.argv = argv
    args.overrides = [item for item in unknown if item.startswith("--") and "=" in item]
    if len(args.overrides) != len(unknown) or (args.overrides and args.command not in ("train", "validate-data")):
        parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    from transformers.utils import logging

    logging.disable_progress_bar()  # our own output stays readable; errors still print
    try:
        args.run(args)
    except (ValueError, OSError) as error:  # expected failures: bad input, files, folders, disks
        if debug:
            raise
        print(f"deepstack {args.command}: error: {error}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr) if isinstance(error, OSError) else None
        return 2
    except KeyboardInterrupt:
        print(f"deepstack {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
