"""Why the default path is int8: throughput of one ViT-B/16 encoder layer's Linear layers (197
tokens, batch 1) in fp32, bf16 and int8 dynamic quantization on this CPU.

    python benchmarks/matmul.py                      # about 20 s
    python benchmarks/matmul.py --repeats 200
"""

import argparse
import warnings

from common import interleaved_ms, median, print_machine, print_table, save_results

import torch
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from inference import FullRangeInt8Linear, cpu_supports_bf16, int8_sums

TOKENS = 197  # 14 x 14 patches + the class token
SHAPES = {"qkv": (768, 2304), "output projection": (768, 768), "MLP in": (768, 3072), "MLP out": (3072, 768)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    print_machine()
    print(
        f"native bf16 (AVX512-BF16 or AMX): {cpu_supports_bf16()}, int8 products add in: {int8_sums()}, "
        f"AMX: {torch.cpu._is_amx_tile_supported()}\n"
    )
    torch.manual_seed(0)
    totals = {"fp32": 0.0, "bf16": 0.0, "int8": 0.0}
    rows, results = [], {}
    for name, (fan_in, fan_out) in SHAPES.items():
        fp32 = nn.Sequential(nn.Linear(fan_in, fan_out)).eval()
        bf16 = nn.Sequential(nn.Linear(fan_in, fan_out)).eval().to(torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices
            int8 = quantize_dynamic(
                fp32, {nn.Linear: per_channel_dynamic_qconfig}, mapping={nn.Linear: FullRangeInt8Linear}
            )
        x = torch.randn(1, TOKENS, fan_in)
        xb = x.to(torch.bfloat16)
        with torch.inference_mode():
            times = interleaved_ms(
                {"fp32": lambda: fp32(x), "bf16": lambda: bf16(xb), "int8": lambda: int8(x)}, args.repeats, warmup=3
            )
        flops = 2 * TOKENS * fan_in * fan_out
        results[name] = times
        row = [f"{name} {fan_in}x{fan_out}"]
        for kind, t in times.items():
            totals[kind] += median(t)
            row += [median(t), f"{flops / median(t) / 1e6:,.0f}"]
        rows.append(row)
    rows.append(["one encoder layer", *(value for kind in totals for value in (totals[kind], ""))])
    print(f"Median ms of {args.repeats} interleaved calls; GFLOPS = 2 * tokens * in * out / time")
    print_table(
        ["Linear (in x out)", "fp32 ms", "fp32 GFLOPS", "bf16 ms", "bf16 GFLOPS", "int8 ms", "int8 GFLOPS"], rows
    )
    print(
        f"int8 is {totals['fp32'] / totals['int8']:.2f}x fp32 and bf16 {totals['fp32'] / totals['bf16']:.2f}x fp32 "
        "over one layer's Linears"
    )
    save_results("matmul", {"linear_ms": results})


if __name__ == "__main__":
    main()
