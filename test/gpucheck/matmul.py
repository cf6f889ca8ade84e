# gpu-check's GPU workload (embedded in bin/gpu-check, written out at run
# time). A loop of bf16 matmuls that synchronizes every --per-sync of them
# and publishes how many it completed, or, with --hog-mib, a process that
# allocates GPU memory 1 GiB at a time until it holds that much.
import argparse
import os
import sys
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--progress", help="file the completed iteration count is written to")
p.add_argument("--size", type=int, default=8192)
p.add_argument("--per-sync", type=int, default=4)
p.add_argument("--hog-mib", type=int, default=0)
p.add_argument("--latency", help="run the latency victim: small steps, idle between them, each step's seconds appended to this file")
a = p.parse_args()

dev = torch.device("cuda")
if a.latency:
    # An inference-style loop: a request of a few small matmuls, then
    # 10 ms idle until the next; each request's time is what a user waits.
    x = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    y = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    pending = []
    last = time.monotonic()
    while True:
        t = time.monotonic()
        for _ in range(8):
            z = x @ y
        torch.cuda.synchronize()
        pending.append(time.monotonic() - t)
        if time.monotonic() - last >= 0.2:
            with open(a.latency, "a") as f:
                f.write("".join(f"{d:.6f}\n" for d in pending))
            pending = []
            last = time.monotonic()
        time.sleep(0.01)

if a.hog_mib:
    held = []
    for _ in range(a.hog_mib // 1024):
        held.append(torch.empty(1 << 30, dtype=torch.uint8, device=dev))
        torch.cuda.synchronize()
        time.sleep(0.2)
    print("hog: holding", len(held), "GiB", flush=True)
    time.sleep(3600)
    sys.exit(0)

x = torch.randn(a.size, a.size, device=dev, dtype=torch.bfloat16)
y = torch.randn(a.size, a.size, device=dev, dtype=torch.bfloat16)
done = 0
last = 0.0
tmp = a.progress + ".tmp"
while True:
    for _ in range(a.per_sync):
        z = x @ y
    torch.cuda.synchronize()
    done += a.per_sync
    now = time.monotonic()
    if now - last >= 0.2:
        with open(tmp, "w") as f:
            f.write(f"{done} {now}\n")
        os.replace(tmp, a.progress)
        last = now
