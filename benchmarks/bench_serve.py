"""Load test of `gensys serve` on loopback: throughput and latency percentiles, with and without batching.

    .venv/bin/python benchmarks/bench_serve.py                      # shipped models/ where present, else tiny
    .venv/bin/python benchmarks/bench_serve.py --models tiny --requests 64 --out runs/serve/bench.json

Two server processes are started side by side (`gensys.serve.main.serve_main`, so the numbers include HTTP,
JSON and the event log), one with `batching.enabled=false`, each with every system loaded. Then the same
bounded number of requests is sent by 1, 8 and 32 concurrent clients to compose/suggest, chat completions
(greedy, `--chat-tokens` new tokens, through the chat pipeline: safety filter on input and output,
sessions) and text completions (the chat LM alone). Reported: requests/s, p50/p90/p99 latency, the largest
batch each server formed, the server's CPU time per request (user + system of its process: on a shared
machine far steadier than wall time), and each server's resident memory (VmRSS after loading, VmHWM peak).
The two servers are loaded in turn (A, B, A, B: `--repeats`), keeping each one's best run, so that the
drifting load of a shared machine does not decide the comparison. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("compose", "translate", "chat", "caption", "rag")
EMAILS = [
    ("Q3 budget", "Thanks for the update. Please let me "),
    ("Meeting", "See you at the meeting tomorrow "),
    ("Re: contract", "I have attached the signed "),
    ("Lunch", "Would you like to join us for "),
    ("Report", "Could you send me the latest version of the "),
    ("Travel", "My flight arrives on Monday at "),
]
QUESTIONS = ["hello", "What is the capital of France?", "Tell me a joke.", "How do I bake bread?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used: unlike wall time, barely moved by other
    processes competing for the same cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiny_models(root: Path) -> dict[str, Path]:
    """Random-weight checkpoints of every family (what the serve tests use), for a machine without models/."""
    sys.path.insert(0, str(REPO / "tests" / "serve"))
    from serve_models import (
        save_captioner,
        save_chat_dir,
        save_decoder_lm,
        save_rag_index,
        save_seq2seq,
        tiny_tokenizer,
    )

    tok = tiny_tokenizer()
    lm = save_decoder_lm(root / "lm", tok)
    return {
        "compose": lm,
        "chat": save_chat_dir(root / "chat", lm),
        "translate": save_seq2seq(root / "translate", tok),
        "caption": save_captioner(root / "caption", tok),
        "rag": save_rag_index(root / "rag"),
    }


def model_paths(kind: str, root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Checkpoint per system and where it came from ("shipped" models/<system> or "tiny")."""
    shipped = {s: REPO / "models" / s for s in SYSTEMS if (REPO / "models" / s).is_dir()}
    origin = dict.fromkeys(shipped, "shipped")
    chat = shipped.get("chat")
    if chat is not None and (chat / "policy").is_dir() and not (chat / "safety").is_dir():
        # the shipped policy without its safety classifier: measure it behind the tests' n-gram stand-in
        sys.path.insert(0, str(REPO / "tests" / "serve"))
        from serve_models import save_chat_dir

        shipped["chat"] = save_chat_dir(root / "chat_shipped", chat / "policy")
        if (chat / "reward").is_dir():
            import shutil

            shutil.copytree(chat / "reward", shipped["chat"] / "reward")
        origin["chat"] = "shipped policy + stand-in n-gram safety classifier"
    if kind == "shipped":
        return shipped, origin
    tiny = tiny_models(root)
    if kind == "tiny":
        return tiny, dict.fromkeys(tiny, "tiny")
    paths = {s: shipped.get(s, tiny[s]) for s in SYSTEMS}
    return paths, {s: origin.get(s, "tiny") for s in SYSTEMS}


class Server:
    """`serve_main` in a child process on a free loopback port."""

    def __init__(self, models: dict[str, Path], batching: bool, workdir: Path, window_ms: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            "--config", str(REPO / "configs" / "serve" / "default.yaml"), "--port", str(self.port),
            f"batching.enabled={str(batching).lower()}", f"batching.window_ms={window_ms}",
            "limits.max_inflight=256", "limits.max_queue=128", "limits.request_timeout_s=600",
            f"events_db={workdir / 'events.sqlite'}", "log_level=warning",
            "predictor_options.compose.latency_budget_ms=0",  # measure the model, not the budget cut-off
            f"predictor_options.chat.sessions.db_path={workdir / 'sessions.sqlite3'}",
            *[f"models.{s}={models.get(s, '')}" for s in SYSTEMS],
        ]  # fmt: skip
        code = f"import sys; from gensys.serve.main import serve_main; sys.exit(serve_main({args!r}))"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = (workdir / "server.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stderr=self.log, cwd=workdir)

    def wait_ready(self, timeout: float = 900.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def request_for(endpoint: str, i: int, chat_tokens: int) -> tuple[str, dict]:
    if endpoint == "compose":
        subject, text = EMAILS[i % len(EMAILS)]
        return "/v1/compose/suggest", {"text": text, "subject": subject}
    if endpoint == "completions":  # the chat LM alone, without the pipeline's safety and best-of-n
        prompt = EMAILS[i % len(EMAILS)][1]
        return "/v1/completions", {
            "model": "chat",
            "prompt": prompt,
            "max_tokens": chat_tokens,
            "temperature": 0,
        }
    q = QUESTIONS[i % len(QUESTIONS)]
    body = {"model": "chat", "messages": [{"role": "user", "content": q}], "max_tokens": chat_tokens}
    return "/v1/chat/completions", {**body, "temperature": 0}


async def load(url: str, endpoint: str, clients: int, n: int, chat_tokens: int) -> dict:
    """`n` requests from `clients` concurrent clients; latency per request and overall throughput."""
    latencies: list[float] = []
    errors = 0
    todo = iter(range(n))
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:

        async def client() -> None:
            nonlocal errors
            for i in todo:
                path, body = request_for(endpoint, i, chat_tokens)
                t0 = time.perf_counter()
                r = await http.post(path, json=body)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"rps": n / wall, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "errors": errors, "n": n}


LABELS = {False: "no batching", True: "batching"}


def show(label: str, endpoint: str, c: int, r: dict) -> None:
    lat = f"p50 {r['p50_ms']:7.1f}  p90 {r['p90_ms']:7.1f}  p99 {r['p99_ms']:7.1f} ms"
    cpu = f"server CPU {r['cpu_ms_per_request']:6.1f} ms/req"
    print(f"  {label:11s} {endpoint:11s} c={c:3d}  {r['rps']:6.2f} req/s  {lat}  {cpu}  errors {r['errors']}",
          flush=True)  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", choices=["auto", "shipped", "tiny"], default="auto", help="which checkpoints")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--requests", type=int, default=64, help="requests per endpoint and concurrency level")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per setting (the best is kept)")
    p.add_argument("--chat-tokens", type=int, default=16, help="max_tokens of each chat request (greedy)")
    p.add_argument("--window-ms", type=float, default=5.0, help="batching window")
    p.add_argument("--out", default="runs/serve/bench.json", help="JSON results")
    a = p.parse_args()
    levels = [int(x) for x in a.clients.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    models, origin = model_paths(a.models, workdir)
    print(f"models: {', '.join(f'{s}={origin[s]}' for s in models)}", flush=True)
    results: dict = {"models": origin, "requests": a.requests, "chat_tokens": a.chat_tokens, "runs": {}}
    results["loadavg_start"] = os.getloadavg()  # other processes on the machine (shared CPUs)
    results["cpus"] = os.cpu_count()
    # Both servers run side by side and are loaded in turn (A, B, A, B): on a shared machine the load of
    # other processes drifts, and alternating keeps that drift out of the with/without comparison.
    servers = {
        b: Server(models, b, workdir / LABELS[b].replace(" ", "_"), a.window_ms) for b in (False, True)
    }
    try:
        for b, server in servers.items():
            t0 = time.perf_counter()
            ready = server.wait_ready()
            mounted = [s for s, d in ready["systems"].items() if d["mounted"]]
            mem = rss_mb(server.proc.pid)
            print(f"[{LABELS[b]}] mounted {mounted} in {time.perf_counter() - t0:.1f}s; "
                  f"RSS {mem['VmRSS']:.0f} MB", flush=True)  # fmt: skip
            results["runs"][LABELS[b]] = {"mounted": mounted, "rss_loaded_mb": mem["VmRSS"], "load": {}}
        for endpoint in ("compose", "chat", "completions"):
            if (endpoint if endpoint != "completions" else "chat") not in mounted:
                continue
            for server in servers.values():
                asyncio.run(load(server.url, endpoint, 2, 4, a.chat_tokens))  # warm-up
            for c in levels:
                for _ in range(a.repeats):
                    for b, server in servers.items():
                        cpu0 = cpu_s(server.proc.pid)
                        r = asyncio.run(load(server.url, endpoint, c, a.requests, a.chat_tokens))
                        r["cpu_ms_per_request"] = (cpu_s(server.proc.pid) - cpu0) * 1000.0 / a.requests
                        best = results["runs"][LABELS[b]]["load"].get(f"{endpoint}@{c}")
                        if best is None or r["rps"] > best["rps"]:
                            results["runs"][LABELS[b]]["load"][f"{endpoint}@{c}"] = r
                for b in servers:
                    show(LABELS[b], endpoint, c, results["runs"][LABELS[b]]["load"][f"{endpoint}@{c}"])
        for b, server in servers.items():
            run = results["runs"][LABELS[b]]
            ready = httpx.get(server.url + "/readyz", timeout=10).json()
            run["batching"] = {s: d["batching"] for s, d in ready["systems"].items() if "batching" in d}
            largest = {s: v["largest_batch"] for s, v in run["batching"].items() if s in ("compose", "chat")}
            run["rss_peak_mb"] = rss_mb(server.proc.pid)["VmHWM"]
            print(f"[{LABELS[b]}] largest batch formed {largest}; peak RSS {run['rss_peak_mb']:.0f} MB")
    finally:
        for server in servers.values():
            server.stop()
    results["loadavg_end"] = os.getloadavg()
    start, end = results["loadavg_start"], results["loadavg_end"]
    print(f"machine load average (1, 5, 15 min): start {start}, end {end}, on {results['cpus']} CPUs")
    base, batched = results["runs"]["no batching"]["load"], results["runs"]["batching"]["load"]
    print("\nwith batching / without (same run, alternating): throughput, and server CPU per request")
    for key in batched:
        ratio = batched[key]["rps"] / base[key]["rps"]
        cpu = batched[key]["cpu_ms_per_request"] / base[key]["cpu_ms_per_request"]
        results.setdefault("speedup", {})[key] = {"throughput": ratio, "cpu_per_request": cpu}
        print(f"  {key:15s} throughput x{ratio:.2f}   CPU per request x{cpu:.2f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
