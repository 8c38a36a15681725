"""The report of benchmarks/gpu_check.py: OUT/results.json and OUT/results.md (the summary table, then a
paragraph or table per section with the details of what it measured)."""
import json

import throughput as tp
from gpu_sections import SECTIONS

FORMATS = {"img/s": lambda v: f"{tp.rate_text(v)} img/s", "x": "{:.2f}x".format,
           "s": "{:,.1f} s".format, "GiB": "{:.2f} GiB".format, "loss": "{:.4f}".format,
           "steps": "{:,.0f} steps".format}


def fmt(value, unit):
    """A value as the tables show it: "-" for None, else by its unit (a key of FORMATS)."""
    return "-" if value is None else FORMATS[unit](value)


def summary(report):
    """The head of results.md: the card, the versions, then every check of every section next to its target."""
    verdict = {True: "pass", False: "**fail**", None: "-"}
    dry = " (DRY RUN: toy sizes on the CPU, not comparable)" * report["dry_run"]
    lines = [f"# GPU check: {report['card']}", "",
             f"{report['date']}, torch {report['torch']} (CUDA {report['cuda']}), {report['total_seconds']:.0f} s "
             f"in all; written by `benchmarks/gpu_check.py`{dry}.",
             "Targets are the issue's (an H100's); on another card they are a reference, not a verdict.", "",
             "| section | result | value | target | pass |", "|---|---|---:|---|:-:|"]
    for name, section in report["sections"].items():
        if section["status"] != "ok":
            lines.append(f"| {SECTIONS[name]} | failed: {section['error'].replace('|', '/')} | | | **fail** |")
        for c in section.get("checks", []):  # a failed section's checks: from the part it finished
            lines.append(f"| {SECTIONS[name]} | {c['what']} | {fmt(c['value'], c['unit'])} | {c['target']} | "
                         f"{verdict[c['passed']]} |")
    return lines


def throughput_details(t):
    lines = [f"Full training step (forward, backward, clip, Adam, EMA), batch {t['batch']}, {t['precision']}; "
             f"median of the timing rounds; measured matmul peak {t['peak_tflops']:.3g} TFLOP/s.",
             "", "| implementation | parameters | forward GFLOPs / image | images / s | peak memory | "
             "utilisation of peak |", "|---|---:|---:|---:|---:|---:|"]
    for r in t["rows"]:
        lines.append(f"| {r['name']} | failed: {r['error']} | | | | |" if "error" in r else
                     f"| {r['name']} | {r['params']:,} | {r['gflops_per_image']:.2f} | "
                     f"{fmt(r['images_per_s'], 'img/s')} | {fmt(r['peak_memory_gib'], 'GiB')} | "
                     f"{r['utilisation']:.1%} |")
    return lines


def fp16_details(f):
    return [f"ddpm_lib's Trainer with precision fp16, batch {f['batch']}, {f['train_steps']} steps: "
            f"{fmt(f['ddpm_lib_images_per_s'], 'img/s')}, final loss {fmt(f['final_loss'], 'loss')}, "
            f"final loss scale {f['final_scale']:g}; diffusers with fp16 + GradScaler: "
            f"{fmt(f['diffusers_images_per_s'], 'img/s')}."]


def sampling_details(p):
    return [f"DPM-Solver++(2M), {p['solver_steps']} steps ({p['model_evals']} model evaluations), batch "
            f"{p['batch']}, {p['precision']}: {p['seconds_per_batch']:.2f} s per batch, "
            f"{fmt(p['images_per_s'], 'img/s')}, peak memory {fmt(p['peak_memory_gib'], 'GiB')}."]


def run_details(r):
    lines = [f"{r['model']} (torch.compile) on {r['images']:,} images ({r['data']}; {r['load_seconds']:.0f} s to "
             f"load): first step with compilation {r['first_step_seconds']:.0f} s, then {r['train_steps']:,} steps in "
             f"{r['train_seconds']:.0f} s ({fmt(r['images_per_s'], 'img/s')}); loss "
             f"{fmt(r['final_loss'], 'loss')} ({r['loss']}) at the end. EMA samples, DPM-Solver++ "
             f"{r['solver_steps']} steps, "
             "the same x_T in every grid:", ""]
    lines += [f"![loss curve]({r['loss_curve']})", ""] if r.get("loss_curve") else []
    lines += [f"Its EMA weights in float16, with their card: `{r['weights']}` (not committed; `make docs "
              f"DOCS_MODEL=<that file>` executes notebooks 05-08 with them).", ""] if r.get("weights") else []
    return lines + ["| " + " | ".join(f"step {g['step']:,}" for g in r["grids"]) + " |",
                    "|" + "---|" * len(r["grids"]),
                    "| " + " | ".join(f"![EMA samples at step {g['step']}]({g['file']})" for g in r["grids"]) + " |"]


def nbval_details(n):
    lines = ["| notebook | result | seconds |", "|---|---|---:|"]
    for r in n["rows"]:
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        lines.append(f"| {r['notebook']} | {'pass' if r['passed'] else 'fail: ' + r['error']} | {secs} |")
    return lines


# section -> (its heading, a key its result has once the details exist, the details' lines)
DETAILS = {"train_throughput": ("Training throughput", "rows", throughput_details),
           "fp16_gradscaler": ("fp16 + GradScaler", "ddpm_lib_images_per_s", fp16_details),
           "sampling": ("Sampling", "images_per_s", sampling_details),
           "cifar10_run": ("CIFAR-10 run", "train_steps", run_details),
           "nbval": ("Notebooks under nbval (smoke mode, on this card)", "rows", nbval_details)}


def markdown(report):
    """results.md: the summary table, then the details of each section that measured them (in DETAILS' order)."""
    lines = summary(report)
    for name, (heading, key, details) in DETAILS.items():
        if key in report["sections"].get(name, {}):
            lines += ["", f"## {heading}", "", *details(report["sections"][name])]
    return "\n".join(lines) + "\n"


def write_report(report, out):
    """OUT/results.json (the whole report) and OUT/results.md."""
    (out / "results.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown(report))
