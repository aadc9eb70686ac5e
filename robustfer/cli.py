"""Command line: argument parsing and printing only; the work is in the packages."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robustfer.errors import RobustferError

DATASETS = ("ferplus", "rafdb", "affectnet", "fer2013", "folder")


def _data_args(p: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    p.add_argument("--dataset", required=dataset_required, choices=DATASETS, help="data set layout")
    p.add_argument("--root", required=dataset_required, help="the data set's folder, as its publisher ships it")
    p.add_argument("--label-mode", default="majority",
                   help="FERPlus label mode: majority, probability, crossentropy, multi_target")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default $ROBUSTFER_CACHE or ~/.cache/robustfer)")


def _kv(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise RobustferError(f"--method-opt {it!r}: expected KEY=VALUE, e.g. --method-opt label_smoothing=0.1")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_methods(args) -> None:
    from robustfer.methods import METHODS

    for name, cls in METHODS.items():
        print(f"{name:10s} {cls.summary}  [{cls.paper}]")


def cmd_data_summary(args) -> None:
    from robustfer.data.summary import summarize_dataset

    kw = {"cache_dir": args.cache_dir}
    if args.dataset == "ferplus":
        kw["label_mode"] = args.label_mode
    s = summarize_dataset(args.dataset, args.root, tuple(args.splits.split(",")) if args.splits else None, **kw)
    if args.json:
        print(json.dumps(s, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    splits = list(s)
    classes = list(next(iter(s.values()))["per_class"])
    t = Table(title=f"{args.dataset} ({args.root})")
    t.add_column("class")
    for sp in splits:
        t.add_column(sp, justify="right")
    for c in classes:
        t.add_row(c, *[str(s[sp]["per_class"].get(c, 0)) for sp in splits])
    t.add_row("total", *[str(s[sp]["images"]) for sp in splits])
    console = Console()
    console.print(t)
    for sp in splits:
        if "votes" in s[sp]:
            v = s[sp]["votes"]
            console.print(f"{sp}: {v['rows_in_label_csv']} rows in label.csv, {v['dropped']} dropped by the "
                          f"{args.label_mode} rule; top class holds {v['mean_top_class_share']:.1%} of votes on "
                          f"average, {v['unanimous_fraction']:.1%} unanimous, {v['two_plus_classes_with_2_votes']:.1%} "
                          "with 2+ classes of 2+ votes")


def cmd_noise(args) -> None:
    from robustfer.data import load_dataset
    from robustfer.data.noise import make_noise, write_noise_csv

    if not 0.0 <= args.rate < 1.0:  # as train's --noise; also NaN
        raise RobustferError(f"--rate {args.rate}: the noise rate must lie in [0, 1), e.g. 0.3 for 30%")
    kw = {"cache_dir": args.cache_dir}
    if args.dataset == "ferplus":
        kw["label_mode"] = args.label_mode
    d = load_dataset(args.dataset, args.root, args.split, **kw)
    noisy, flipped = make_noise(d.labels, d.classes, args.type, args.rate, args.seed)
    write_noise_csv(args.out, d.files, d.classes, d.labels, noisy)
    print(f"wrote {args.out}: {len(d)} images, {int(flipped.sum())} flipped ({flipped.mean():.2%}), "
          f"{args.type} noise at rate {args.rate}, seed {args.seed}")


def config_from_args(args) -> "TrainConfig":
    """A TrainConfig from `train`'s arguments: every option whose name is a TrainConfig field."""
    from dataclasses import fields

    from robustfer.train import TrainConfig

    for name in ("dataset", "root", "method"):
        if getattr(args, name) is None:
            raise RobustferError(f"train needs --{name} (or --resume to continue the run in --out)")
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**kw, method_options=_kv(args.method_opt))


def cmd_train(args) -> None:
    from robustfer.train import TrainConfig, train

    if args.resume:
        summary = train(TrainConfig(dataset="", root="", out=args.out), resume=True, quiet=args.quiet,
                        detect_anomaly=args.detect_anomaly)
    else:
        summary = train(config_from_args(args), quiet=args.quiet, auto_resume=args.auto_resume,
                        detect_anomaly=args.detect_anomaly)
    if summary:
        print(f"last epoch: accuracy {summary['last']['accuracy']:.4f}, mean-class {summary['last']['mean_class_accuracy']:.4f}; "
              f"best on {summary.get('selected_on', 'test')} (epoch {summary['best']['epoch']} of 0-{summary['epochs'] - 1}, as in metrics.jsonl): "
              f"test accuracy {summary['best']['accuracy']:.4f}; "
              f"{summary['wall_s']:.0f} s; run folder {args.out}")


def cmd_eval(args) -> None:
    import numpy as np
    import torch

    from robustfer.data import load_dataset
    from robustfer.data.classes import canonical_name
    from robustfer.evaluate import evaluate_predictions
    from robustfer.models.predict import predict_logits
    from robustfer.train.checkpoint import load_trained

    path = Path(args.checkpoint)
    ckpts = [("last", path / "last.pt"), ("best", path / "best.pt")] if path.is_dir() else [(path.stem, path)]
    kw = {"cache_dir": args.cache_dir}
    if args.dataset == "ferplus":
        kw["label_mode"] = args.label_mode
    results = {}
    data = None
    for tag, ck in ckpts:
        model, spec, classes, _ = load_trained(ck)
        if data is None:
            data = load_dataset(args.dataset, args.root, args.split, **kw)
            lookup = {c: i for i, c in enumerate(classes)}
            missing = [c for c in data.classes if canonical_name(c) not in lookup]
            if missing:
                raise RobustferError(f"checkpoint {ck} was trained on the classes {list(classes)}, the data set "
                                     f"{args.root} has {list(data.classes)} ({missing} unknown to the model): evaluate "
                                     "on a data set whose classes the checkpoint knows")
            labels = np.array([lookup[canonical_name(data.classes[y])] for y in data.labels], np.int64)
            images = torch.from_numpy(np.array(data.images))
            votes = None  # annotator votes (FERPlus), their class columns put in the checkpoint's class order
            if data.votes is not None and len(data.votes):
                votes = np.zeros((len(data.votes), len(classes)), np.float64)
                for i, c in enumerate(data.classes):
                    votes[:, lookup[canonical_name(c)]] = data.votes[:, i]
        logits = predict_logits(model, images, spec["size"], spec["channels"], spec["norm"])
        results[tag] = evaluate_predictions(logits.argmax(1).numpy(), labels, classes, logits.numpy(),
                                            votes=votes, min_votes=args.min_votes)
    if args.json:
        print(json.dumps(results if len(results) > 1 else next(iter(results.values())), indent=2))
        return
    for tag, r in results.items():
        print(f"{tag}: accuracy {r['accuracy']:.4f}  mean-class accuracy {r['mean_class_accuracy']:.4f}  ({r['n']} images)")
        print("  per-class recall: " + ", ".join(f"{c} {v:.3f}" if v is not None else f"{c} -"
                                                 for c, v in r["per_class_recall"].items()))
        if "vote_kl" in r:
            print(f"  votes ({r['vote_images']} images): KL(votes||p) {r['vote_kl']:.4f}  top-vote probability "
                  f"{r['top_vote_prob']:.4f}  plausible accuracy {r['plausible_accuracy']:.4f} "
                  f"(predicted class got >= {r['plausible_min_votes']} votes)")


def cmd_audit(args) -> None:
    from robustfer.infer.audit import audit, noise_scores

    sheet = False if args.sheet == "none" else args.sheet
    rows = audit(args.dataset, args.root, args.out, checkpoint=args.checkpoint, folds=args.folds, epochs=args.epochs,
                 noise=args.noise, limit=args.limit, sheet=sheet, top=args.top, seed=args.seed, device=args.device,
                 threads=args.threads, cache_dir=args.cache_dir, label_mode=args.label_mode, quiet=args.quiet)
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else f"{args.folds}-fold cross-fitted CE ({args.epochs} epochs)"
    n_issue = sum(r["issue"] for r in rows)
    print(f"wrote {args.out}: {len(rows)} training images ranked ({source}); cleanlab flags {n_issue} "
          f"({n_issue / max(len(rows), 1):.1%}) as label issues, listed first")
    if sheet is not False:
        print(f"wrote {args.sheet or Path(args.out).with_suffix('.png')}: the top {min(args.top, len(rows))} suspects")
    s = noise_scores(rows)
    if s is not None:
        print(f"against the true flips ({s['flipped']} of {s['images']}, {s['noise_rate']:.1%}): top 10% "
              f"({s['top_k']} images) precision {s['top_precision']:.3f} recall {s['top_recall']:.3f}; cleanlab's "
              f"{s['cleanlab_flagged']} flagged: precision {s['cleanlab_precision']:.3f} recall {s['cleanlab_recall']:.3f}")


def cmd_predict(args) -> int:
    from robustfer.infer.predict import run_predict

    return run_predict(args.inputs, checkpoint=args.checkpoint, onnx=args.onnx, out=args.out, as_json=args.json,
                       detector=args.detector, no_detect=args.no_detect, every=args.every, smooth=args.smooth,
                       batch=args.batch, device=args.device, quiet=args.quiet)


def _face_model_args(s: argparse.ArgumentParser) -> None:
    """The model and detector options `predict` and `serve` share (both build a Predictor from them)."""
    from robustfer.infer.detect import DEFAULT_DETECTOR, DETECTORS

    g = s.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="a train checkpoint (.pt) or run folder (its best.pt, else last.pt); "
                   "default: the shipped model")
    g.add_argument("--onnx", help="an ONNX file from `robustfer export` (runs on onnxruntime)")
    s.add_argument("--detector", choices=list(DETECTORS), help=f"face detector (default {DEFAULT_DETECTOR})")
    s.add_argument("--no-detect", action="store_true", help="classify each image whole (inputs that are face crops)")


def _predict_parser(sub) -> None:
    s = sub.add_parser(
        "predict", help="detect the faces in images, folders or videos and classify their expressions",
        description="Detect faces in images, folders (searched recursively) and videos, and classify each face's "
                    "expression. Exit status: 0 when every input was processed; 1 when any input failed (an "
                    "unreadable or damaged image or video, a wrong file type, a missing path: one 'error:' line "
                    "each on stderr, the other inputs are still processed); 2 for a bad model or option.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images (recursive), video files")
    _face_model_args(s)
    s.add_argument("--out", help="folder for annotated copies (images; per video: .annotated.mp4, .summary.json, "
                                 ".timeline.png), keeping the inputs' relative folder structure")
    s.add_argument("--json", action="store_true", help="one JSON object per face per line: source, frame (null for "
                   "images), box [x, y, w, h], label, probs (+ score, whole, track); no face: box and label null")
    s.add_argument("--every", type=int, default=1, help="video: classify every N-th frame (default 1)")
    s.add_argument("--smooth", action="store_true", help="video: exponential moving average of each tracked face's "
                   "probabilities, p = 0.5 * p_frame + 0.5 * p_previous")
    s.add_argument("--batch", type=int, default=16, help="video: frames per classifier batch (default 16)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (PyTorch checkpoints)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_predict)


def cmd_serve(args) -> None:
    from robustfer.infer.serve import run_serve

    run_serve(checkpoint=args.checkpoint, onnx=args.onnx, host=args.host, port=args.port, detector=args.detector,
              no_detect=args.no_detect)


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="a local web page: upload a photo (or use the webcam), see each face boxed with "
                       "its probabilities", description="Serve a local web page (Gradio) where you upload a photo or "
                       "take one with the webcam and see every face boxed, with a probability bar chart per face. "
                       "Nothing leaves this machine; the page listens on 127.0.0.1 unless --host says otherwise.")
    _face_model_args(s)
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the "
                   "local network)")
    s.set_defaults(func=cmd_serve)


def cmd_explain(args) -> int:
    from robustfer.infer.explain import run_explain

    return run_explain(args.inputs, args.out, checkpoint=args.checkpoint, given=args.given, detector=args.detector,
                       no_detect=args.no_detect, device=args.device)


def _explain_parser(sub) -> None:
    s = sub.add_parser(
        "explain", help="heat maps (Grad-CAM / CAM) of where the model looks, per face",
        description="For each face in the images (found and cropped as predict does), a Grad-CAM heat map of the "
                    "predicted class (CAM for the CNNs' linear heads; ViTs: Grad-CAM on the patch-token map) over the "
                    "face, and with --given of that class too: OUT/<image>.cam.png and one line per face. An image "
                    "without a face gets one line 'PATH: no face found' and no file. Exit status as predict's.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images (recursive)")
    s.add_argument("--checkpoint", help="a train checkpoint (.pt) or run folder (its best.pt, else last.pt); "
                   "default: the shipped model")
    from robustfer.infer.detect import DEFAULT_DETECTOR, DETECTORS

    s.add_argument("--detector", choices=list(DETECTORS), help=f"face detector (default {DEFAULT_DETECTOR})")
    s.add_argument("--no-detect", action="store_true", help="take each image whole (inputs that are face crops)")
    s.add_argument("--out", required=True, help="folder for the heat-map PNGs (the inputs' relative paths kept)")
    s.add_argument("--given", metavar="CLASS", help="also the heat map of this class (e.g. the image's training label)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.set_defaults(func=cmd_explain)


def cmd_report(args) -> None:
    from robustfer.report import make_report

    r = make_report(args.run, checkpoint=args.checkpoint, out=args.out, root=args.root, max_points=args.max_points,
                    top=args.top, seed=args.seed, device=args.device, quiet=args.quiet)
    print(f"report of {args.run} ({Path(r['checkpoint']).name}, epoch {r['epoch']}): {len(r['figures'])} figures in "
          f"{args.out or Path(args.run) / 'report'} ({r['total_s']:.0f} s; trust signal: {r['trust_signal']})")


def _report_parser(sub) -> None:
    s = sub.add_parser(
        "report", help="figures of a train run: t-SNE of features, confusion heat map, per-class recall, the "
                       "training images the method distrusts most",
        description="Qualitative figures of a train run folder, as PNG in RUN/report/ with report.json (the seconds "
                    "each took): confusion.png, recall.png, tsne_test.png (eval features by class), "
                    "tsne_train_noise.png (synthetic noise: training features by clean vs flipped label and by the "
                    "method's flag from RUN/samples.npz), distrusted.png (given vs predicted label).")
    s.add_argument("run", metavar="RUN", help="a train run folder (--out of `robustfer train`)")
    s.add_argument("--checkpoint", default="last", help="last (default: the epoch of samples.npz), best, or a .pt path")
    s.add_argument("--out", help="folder for the figures (default RUN/report)")
    s.add_argument("--root", help="the data set's folder, if it moved since training (default: the run's --root)")
    s.add_argument("--max-points", type=int, default=6000, help="t-SNE on at most N images per plot, seeded "
                   "sample (default 6000)")
    s.add_argument("--top", type=int, default=32, help="images in distrusted.png (default 32)")
    s.add_argument("--seed", type=int, default=0, help="t-SNE and sampling seed (default 0)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=cmd_report)


def cmd_export(args) -> None:
    from robustfer.infer.export import export_onnx, export_slim

    kw = {"cache_dir": args.cache_dir}
    if args.dataset == "ferplus":
        kw["label_mode"] = args.label_mode
    if args.format == "pt":
        r = export_slim(args.checkpoint, args.out, half=args.half, batch=args.batch, dataset=args.dataset,
                        root=args.root, **kw)
        print(f"wrote {r.out} from {r.checkpoint} ({r.size_mb:.1f} MB, {'fp16' if r.half else 'fp32'} weights); check "
              f"on {r.check_on}: max |probabilities - the full checkpoint's| = {r.max_prob_diff:.2e}, argmax "
              f"agreement {r.argmax_agreement:.1%}")
        return
    r = export_onnx(args.checkpoint, args.out, args.format, opset=args.opset, int8=args.int8, int8_mode=args.int8_mode,
                    batch=args.batch, calib=args.calib, tolerance=args.tolerance, dataset=args.dataset, root=args.root, **kw)
    c, h, w = r.input_shape
    print(f"wrote {r.out} from {r.checkpoint} (opset {r.opset}, {r.out.stat().st_size / 2**20:.1f} MB): input float32 "
          f"N x {c} x {h} x {w}, normalised (preprocessing in the file's metadata); output logits for {len(r.classes)} "
          f"classes: {', '.join(r.classes)}")
    print(f"check on {r.check_on}: max |logits onnxruntime - PyTorch| = {r.max_abs_diff:.2e} (tolerance {r.tolerance:g}); "
          f"argmax agreement {r.argmax_agreement:.1%}; OnnxClassifier (numpy preprocessing from the metadata) "
          f"probabilities within {r.max_prob_diff:.2e}")
    if r.int8:
        q = r.int8
        print(f"wrote {q['out']} ({q['mode']} int8{', calibrated on ' + q['calibration'] if q['calibration'] else ''}; "
              f"{q['size_mb']:.1f} MB vs {q['fp32_size_mb']:.1f}): on the check batch max |logits int8 - fp32| = "
              f"{q['max_abs_diff']:.3f}, argmax agreement {q['argmax_agreement']:.1%}")


def _train_options(s: argparse.ArgumentParser) -> None:
    """The options `train` and `bench` share (bench passes them to every cell)."""
    from robustfer.models import DEFAULT_MODEL, MODELS

    s.add_argument("--model", default=DEFAULT_MODEL, help=f"one of {', '.join(MODELS)} (default {DEFAULT_MODEL})")
    s.add_argument("--recipe", default=None, choices=("official", "cpu"),
                   help="official = the method's published recipe; cpu = the shared quick protocol "
                        "(default: cpu for the compact* models, official otherwise)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--optimizer", choices=("adam", "sgd"))
    s.add_argument("--schedule", choices=("constant", "exp", "onecycle", "cosine", "step"))
    s.add_argument("--milestones", type=lambda v: [int(x) for x in v.strip("[]").split(",") if x.strip()],
                   help="--schedule step: comma-separated epochs at whose START the lr is multiplied by --gamma, e.g. 0,10")
    s.add_argument("--sampler", choices=("shuffle", "balanced"),
                   help="epoch order: shuffle, or balanced (draws with replacement, weight 1 / class count)")
    s.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    s.add_argument("--gamma", type=float, help="lr factor per epoch of --schedule exp, per milestone of step (default: the recipe's)")
    s.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop the last incomplete batch of each epoch (default: the recipe's)")
    s.add_argument("--norm", choices=("imagenet", "rafdb", "half"), help="input normalisation (default: the method's)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    s.add_argument("--input-size", type=int, help="network input size (default: the model's)")
    s.add_argument("--init", help="pretrained weights for the backbone (.pth state_dict)")
    s.add_argument("--limit", type=int, help="use the first N training images (smoke runs)")
    s.add_argument("--offset", type=int, help="skip the first N training images (with --limit: images N..N+limit)")
    s.add_argument("--eval-limit", type=int, help="evaluate on the first N images of --eval-split (smoke runs)")
    s.add_argument("--imbalance", type=float, help="long-tailed training subset: largest/smallest class = FACTOR, "
                   "drawn from the images --offset/--limit select")
    s.add_argument("--train-split", default="train")
    s.add_argument("--eval-split", default="test")
    s.add_argument("--threads", type=int, help="CPU threads for torch")
    s.add_argument("--method-opt", action="append", metavar="KEY=VALUE", help="method option, repeatable")
    s.add_argument("--ema", type=float, help="evaluate and save an exponential moving average of the weights "
                   "with this decay (e.g. 0.999)")
    s.add_argument("--eval-every", type=int, default=1, help="evaluate every K epochs (the last epoch always)")
    s.add_argument("--select-split", help="where best.pt is chosen: a split of the data set, holdout (a seeded "
                   "part of train), or test (the papers' habit, labelled so); default the data set's validation "
                   "split (FERPlus valid, FER2013 val), else holdout")
    s.add_argument("--holdout", type=float, default=0.1, help="share of train held out for --select-split holdout")
    s.add_argument("--fold", help="I/K cross-fitting: train on the other K-1 seeded folds of the training images and "
                   "write fold I's predicted probabilities to RUN/heldout.npz (bench's cleanlab comparison)")
    _scale_args(s)
    s.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun on GPUs: SyncBatchNorm, statistics over the whole global batch (default off: "
                   "each rank normalises its own part)")
    s.add_argument("--ddp-views", choices=("shard", "global"), default=None,
                   help="under torchrun: shard (default) = each rank augments its part of the batch with its own seeded "
                   "generator; global = every rank augments the whole batch and keeps its part, the 1-process run's exact "
                   "views (N times the augmentation work: for checks)")


def _scale_args(s: argparse.ArgumentParser) -> None:
    """Options of train and pretrain for data larger than memory (several processes: torchrun, README)."""
    s.add_argument("--data-in-memory", choices=("auto", "yes", "no"), default=None,
                   help="training images as one tensor on the device (yes), or left in the memory-mapped cache and "
                   "moved to the device batch by batch (no); auto (default): no when they take more than half the free "
                   "memory")


def cmd_pretrain(args) -> None:
    from dataclasses import fields

    from robustfer.pretrain import PretrainConfig, pretrain

    if args.resume:
        s = pretrain(PretrainConfig(dataset="", root="", out=args.out), resume=True, quiet=args.quiet,
                     detect_anomaly=args.detect_anomaly)
    else:
        for name in ("dataset", "root", "objective"):
            if getattr(args, name) is None:
                raise RobustferError(f"pretrain needs --{name} (or --resume to continue the run in --out)")
        cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig) if hasattr(args, f.name)})
        s = pretrain(cfg, quiet=args.quiet, auto_resume=args.auto_resume, detect_anomaly=args.detect_anomaly)
    if s:
        print(f"{s['objective']} on {s['model']}: {s['train_images']} images, {s['epochs']} epochs, loss "
              f"{s['loss_first']:.4f} -> {s['loss_last']:.4f}; {s['wall_s']:.0f} s; start training from it with "
              f"`robustfer train --init {s['checkpoint']} --model {s['model']} ...`")


def _pretrain_parser(sub) -> None:
    from robustfer.models import DEFAULT_MODEL, MODELS
    from robustfer.pretrain import OBJECTIVES

    s = sub.add_parser("pretrain", help="label-free pre-training on the training images (labels unused); "
                       "`train --init RUN/last.pt` starts from it")
    _data_args(s, dataset_required=False)
    s.add_argument("--objective", choices=tuple(OBJECTIVES),
                   help="; ".join(f"{n}: {c.summary} [{c.paper}]" for n, c in OBJECTIVES.items()).replace("%", "%%"))
    s.add_argument("--out", required=True, help="run folder (config.json, last.pt, metrics.jsonl, summary.json)")
    s.add_argument("--model", help=f"one of {', '.join(MODELS)} (default vit_s for mae, {DEFAULT_MODEL} otherwise)")
    s.add_argument("--epochs", type=int, help="default: the objective's recipe (100)")
    s.add_argument("--batch-size", type=int, help="default 256")
    s.add_argument("--lr", type=float, help="default: base lr x batch size / 256 (mae 1.5e-4, simsiam 0.05)")
    s.add_argument("--weight-decay", type=float, help="default: mae 0.05, simsiam 5e-4")
    s.add_argument("--optimizer", choices=("adamw", "sgd"), help="default: mae adamw, simsiam sgd")
    s.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    s.add_argument("--warmup-epochs", type=float, help="linear warm-up before the cosine decay (default: mae 5%% of --epochs, simsiam 0)")
    s.add_argument("--mask-ratio", type=float, help="mae: share of patches masked (default 0.75)")
    s.add_argument("--decoder-depth", type=int, help="mae: decoder blocks (default 2)")
    s.add_argument("--decoder-dim", type=int, help="mae: decoder width (default 128)")
    s.add_argument("--decoder-heads", type=int, help="mae: decoder attention heads (default 4)")
    s.add_argument("--proj-dim", type=int, help="simsiam: projector width (default 512)")
    s.add_argument("--pred-dim", type=int, help="simsiam: predictor bottleneck (default 128)")
    s.add_argument("--norm", default="imagenet", choices=("imagenet", "rafdb", "half"),
                   help="input normalisation: the one the train runs that start from it use (default imagenet)")
    s.add_argument("--input-size", type=int, help="network input size (default: the model's)")
    s.add_argument("--train-split", default="train")
    s.add_argument("--offset", type=int, help="skip the first N training images (pretrain on images a bench never uses)")
    s.add_argument("--limit", type=int, help="use N training images (after --offset)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    s.add_argument("--threads", type=int, help="CPU threads for torch")
    _scale_args(s)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    s.add_argument("--auto-resume", action="store_true", help="idempotent: skip a finished run with these settings, "
                   "continue an interrupted one, else start (bench's [pretrain] stage)")
    s.add_argument("--detect-anomaly", action="store_true", help="debugging a NaN/inf: autograd's anomaly mode "
                   "names the operation that made it (slower: debugging only; works with --resume)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    s.set_defaults(func=cmd_pretrain)


def cmd_bench(args) -> None:
    from robustfer.bench import load_grid_file, make_grid, run_bench
    from robustfer.bench.grid import OWNED, TRAIN_FIELDS

    raw = load_grid_file(args.grid) if args.grid else {}
    defaults = vars(build_parser().parse_args(["bench", "--out", "x"]))
    given = {k: v for k, v in vars(args).items() if k in TRAIN_FIELDS - OWNED and v != defaults.get(k)}
    if getattr(args, "method_opt", None):
        given["method_options"] = _kv(args.method_opt)
    raw["train"] = {**raw.get("train", {}), **given}
    for key in ("methods", "noise", "seeds"):
        if getattr(args, key, None):
            raw[key] = getattr(args, key).split(",")
    if "seeds" in raw and getattr(args, "seeds", None):
        try:
            raw["seeds"] = [int(x) for x in raw["seeds"]]
        except ValueError:
            raise RobustferError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 1,2,3") from None
    if getattr(args, "noise_type", None):
        raw["noise_type"] = args.noise_type
    if args.no_controls:
        raw["controls"] = False
    if args.cleanlab_folds:
        raw["cleanlab"] = {**raw.get("cleanlab", {}), "folds": args.cleanlab_folds}
    if args.cleanlab_epochs:
        raw.setdefault("cleanlab", {})["epochs"] = args.cleanlab_epochs
    grid = make_grid(raw, args.grid or "bench")
    import signal

    def _stop(signum, frame):  # SIGTERM (timeout, a scheduler): stop like Ctrl-C, the cells continue next time
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    run_bench(grid, args.out, workers=args.workers, dry_run=args.dry_run, live=not args.no_live,
              collect_only=args.collect_only)
    if args.report and not args.dry_run:  # robustfer report of every finished cell that has none yet
        from robustfer.report import report_grid

        report_grid(args.out)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (what is wrong, and where the help is) with exit status 2;
    sub-commands' parsers are of this class too (add_subparsers uses the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="robustfer", description="FER under noisy and ambiguous labels")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("methods", help="list the training methods")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("data", help="data set tools")
    dsub = s.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("summary", help="images per split and class (FERPlus: vote statistics)")
    _data_args(ds)
    ds.add_argument("--splits", default=None, help="comma-separated splits (default: all of the data set)")
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(func=cmd_data_summary)

    s = sub.add_parser("noise", help="write noisy training labels (csv: image,clean_label,noisy_label,flipped)")
    _data_args(s)
    s.add_argument("--type", required=True, choices=("symmetric", "pair", "uneven"))
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--split", default="train")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_noise)

    s = sub.add_parser("train", help="train a model; writes the run folder --out")
    _data_args(s, dataset_required=False)
    s.add_argument("--method", default="ce")
    s.add_argument("--out", required=True, help="run folder")
    _train_options(s)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--noise", help="synthetic noise TYPE:RATE[:SEED], e.g. symmetric:0.3")
    s.add_argument("--noise-file", help="noisy label csv written by `robustfer noise`")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    s.add_argument("--auto-resume", action="store_true", help="idempotent: skip a finished run with these settings, "
                   "continue an interrupted one, else start (what bench's commands.txt uses)")
    s.add_argument("--detect-anomaly", action="store_true", help="debugging a NaN/inf: autograd's anomaly mode "
                   "names the operation that made it (slower: debugging only; works with --resume)")
    s.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("bench", argument_default=argparse.SUPPRESS,
                       help="the grid methods x noise x seeds (+ CE controls): results.csv/md, plots; resumable")
    _data_args(s, dataset_required=False)
    s.add_argument("--out", required=True, help="grid folder: cells/<name>/ run folders, commands.txt, results")
    s.add_argument("--grid", default=None, help="grid .toml (sweeps, per-method options, a pretraining stage; "
                   "see the README); command-line options override it")
    s.add_argument("--methods", default=None, help="comma-separated, e.g. ce,ncctfer,nla (default ce)")
    s.add_argument("--noise", default=None, help="comma-separated rates or TYPE:RATE, e.g. 0,0.3,pair:0.3 (default 0)")
    s.add_argument("--noise-type", default=None, choices=("symmetric", "pair", "uneven"),
                   help="type of the bare rates in --noise (default symmetric)")
    s.add_argument("--seeds", default=None, help="comma-separated seeds (default 1)")
    s.add_argument("--workers", type=int, default=1, help="cells at once (threads per cell = cores / workers)")
    s.add_argument("--no-controls", action="store_true", default=False,
                   help="skip the CE controls at each method's recipe")
    s.add_argument("--dry-run", action="store_true", default=False, help="write commands.txt, list the cells, train nothing")
    s.add_argument("--no-live", action="store_true", default=False, help="no live table")
    s.add_argument("--collect-only", action="store_true", default=False,
                   help="write the tables and plots of the finished cells; train nothing")
    s.add_argument("--report", action="store_true", default=False, help="then `robustfer report` each finished cell "
                   "(CELL/report/: t-SNE, confusion, recall, distrusted images) that has no report yet")
    s.add_argument("--cleanlab-folds", type=int, default=None, help="also run cleanlab on K-fold cross-fitted CE "
                   "probabilities for every noisy setting and score it beside the methods' flags")
    s.add_argument("--cleanlab-epochs", type=int, default=None, help="epochs of each cross-fitting fold (default the cells')")
    _train_options(s)
    s.set_defaults(func=cmd_bench)

    _pretrain_parser(sub)

    s = sub.add_parser("eval", help="accuracy, mean-class accuracy, per-class recall, confusion matrix")
    s.add_argument("--checkpoint", required=True, help="a .pt file, or a run folder (evaluates last.pt and best.pt)")
    _data_args(s)
    s.add_argument("--split", default="test")
    s.add_argument("--min-votes", type=int, default=2,
                   help="plausible accuracy's T: the predicted class needs at least T votes (data sets with votes; default 2)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("export", help="the test-time network as an ONNX file (dynamic batch, classes and "
                       "preprocessing in its metadata); checks onnxruntime against PyTorch")
    s.add_argument("--checkpoint", required=True, help="a .pt file, or a run folder (its best.pt, else last.pt)")
    s.add_argument("--format", default="onnx", help="onnx (default): for onnxruntime; pt: a "
                   "slim PyTorch checkpoint (weights, config, classes; no optimiser state) for --checkpoint")
    s.add_argument("--half", action="store_true", help="--format pt: store the weights in fp16 (half the size; "
                   "loaded back into fp32)")
    s.add_argument("--out", required=True, help="F.onnx; --int8 also writes F.int8.onnx")
    s.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20 with torch 2.14)")
    s.add_argument("--int8", action="store_true", help="also write F.int8.onnx, quantised by onnxruntime")
    s.add_argument("--int8-mode", default="static", choices=("static", "dynamic"),
                   help="static (default): int8 convolutions, calibrated on --calib training images of --dataset/--root "
                        "(random smooth images without them); dynamic: no calibration, int8 MatMul only, slower "
                        "than fp32 for CNNs")
    s.add_argument("--calib", type=int, default=256, help="calibration images for --int8-mode static (default 256)")
    s.add_argument("--batch", type=int, default=8, help="images in the onnxruntime-vs-PyTorch check (default 8)")
    s.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed max abs logit difference (default 1e-3)")
    _data_args(s, dataset_required=False)
    s.set_defaults(func=cmd_export)
    _predict_parser(sub)
    _serve_parser(sub)
    _explain_parser(sub)
    _report_parser(sub)

    s = sub.add_parser("audit", help="rank the training images by how likely their label is wrong (cleanlab on "
                       "out-of-sample probabilities); csv image,given_label,suggested_label,score + contact sheet")
    _data_args(s)
    s.add_argument("--out", required=True, help="csv, most suspicious first; cross-fitting runs go to "
                   "OUT_audit_runs/ beside it (a rerun resumes them)")
    s.add_argument("--checkpoint", help="a model trained on other data: predict the training images directly "
                   "(default: K-fold cross-fitting)")
    s.add_argument("--folds", type=int, default=3, help="K of the cross-fitting (default 3)")
    s.add_argument("--epochs", type=int, default=5, help="epochs of each fold's CE model, compact CNN, CPU recipe "
                   "(default 5)")
    s.add_argument("--noise", help="synthetic noise TYPE:RATE[:SEED] on the training labels (as train's); also "
                   "prints precision/recall of the top 10%% against the true flips")
    s.add_argument("--limit", type=int, help="audit the first N training images")
    s.add_argument("--sheet", help="contact-sheet PNG (default: OUT with .png; 'none' for none)")
    s.add_argument("--top", type=int, default=48, help="suspects on the contact sheet (default 48)")
    s.add_argument("--seed", type=int, default=1, help="folds, training and noise seed (default 1)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--threads", type=int, help="CPU threads for torch")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except RobustferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: a train run continues from its last finished epoch with --resume "
              "(bench: run the same command again)", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0
