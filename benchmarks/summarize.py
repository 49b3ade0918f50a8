"""Turns a pytest-benchmark JSON into the Markdown table kept in benchmarks/RESULTS.md:
per group, each implementation's median, speedup over the reference eager, and extra_info (GB/s, ...)."""

import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    groups = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    print(f"Machine: {data['machine_info'].get('node')}, {data.get('datetime')}")
    for group, benches in sorted(groups.items()):
        reference = next((b for b in benches if "[reference" in b["name"] or "-reference" in b["name"]), None)
        print(f"\n### {group}\n\n| benchmark | median (µs) | vs reference eager | extra |\n|---|---|---|---|")
        for bench in sorted(benches, key=lambda b: b["stats"]["median"]):
            median = bench["stats"]["median"]
            speedup = f"{reference['stats']['median'] / median:.2f}×" if reference else "n/a"
            extra = ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in bench.get("extra_info", {}).items()
                if k != "device"
            )
            print(f"| {bench['name']} | {median * 1e6:.1f} | {speedup} | {extra} |")


if __name__ == "__main__":
    main(sys.argv[1])
