"""Fixtures only a GPU machine can make; run there as ``python3 tests/data/make_gpu_fixtures.py OUTDIR``.

- ``cuda_training_checkpoint.pth``: a training checkpoint written from CUDA:
  a DataParallel state_dict (keys ``module.*``) and Adam state, all tensors on
  the GPU, as a user's training job saves it.
- ``cuda_outputs.npz``: inputs and the outputs the trained model computed on
  the GPU (TF32 off), for the served model to match.
- ``cuda_visibility.json``: for each CUDA_VISIBLE_DEVICES value, how many
  devices the CUDA driver shows (cuInit, cuDeviceGetCount), beside what
  ``nvidia-smi -L`` printed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

# what the CUDA driver (and so TensorFlow) counts; torch.cuda.device_count() parses the variable itself
COUNT_DEVICES = """
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
status = cuda.cuInit(0)
count = ctypes.c_int(0)
if status == 0:
    cuda.cuDeviceGetCount(ctypes.byref(count))
print(count.value if status in (0, 100) else f"cuInit error {status}")
"""


def cuda_net() -> nn.Module:
    """The model of tests/test_gpu_fixtures.py (keep the two alike)."""
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 3))


def checkpoint_and_outputs(out: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = nn.DataParallel(cuda_net().cuda())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 8, 8, device="cuda")).square().mean().backward()
        optimizer.step()
    state = model.state_dict()
    assert all(key.startswith("module.") and value.is_cuda for key, value in state.items())
    torch.save({"epoch": 3, "arch": "cuda_net", "state_dict": state, "optimizer": optimizer.state_dict()},
               out / "cuda_training_checkpoint.pth")
    model.eval()
    inputs = torch.randn(3, 1, 8, 8, device="cuda")
    with torch.no_grad():
        outputs = model(inputs)
    np.savez(out / "cuda_outputs.npz", inputs=inputs.cpu().numpy(), outputs=outputs.cpu().numpy())


def visibility(out: Path) -> None:
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    uuid = listing.split("UUID: ")[1].split(")")[0]
    cases = {}
    odd_spellings = ["GPU-" + uuid[4:].upper(), uuid[:12], "GPU-", "00", "+0", "0a", "-0", "MIG-deadbeef", "0,0"]
    for value in [None, "0", "", "-1", uuid, "0,1", "1", "0,-1,1", *odd_spellings]:
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if value is not None:
            env["CUDA_VISIBLE_DEVICES"] = value
        counted = subprocess.run([sys.executable, "-c", COUNT_DEVICES], env=env, capture_output=True, text=True)
        answer = counted.stdout.strip()
        cases["<unset>" if value is None else value] = int(answer) if answer.isdigit() else answer
    (out / "cuda_visibility.json").write_text(json.dumps(
        {"nvidia_smi_L": listing, "uuid": uuid, "device_count": cases, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    checkpoint_and_outputs(target)
    visibility(target)
    print((target / "cuda_visibility.json").read_text())
