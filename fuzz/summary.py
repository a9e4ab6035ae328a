"""Summarises `make fuzz` logs (libFuzzer's -print_final_stats) as a Markdown table."""
import re
import subprocess
import sys

logs, seconds, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
print("# Fuzzing (`make fuzz`)\n")
print(f"Each target ran {seconds} s on the release build of fuzz/ with AddressSanitizer "
      f"and debug assertions, at commit {commit}, on 2 cores, one target at a time.\n")
print("| target | executions | exec/s | corpus units | coverage (edges) | crashes |")
print("|---|---:|---:|---:|---:|---:|")
for t in targets:
    text = open(f"{logs}/{t}.log", errors="replace").read()
    def stat(name):
        m = re.findall(rf"stat::{name}:\s+(\d+)", text)
        return int(m[-1]) if m else 0
    runs = stat("number_of_executed_units")
    per_s = stat("average_exec_per_sec")
    cov = re.findall(r"cov: (\d+)", text)
    corp = re.findall(r"corp: (\d+)/", text)
    crashes = len(re.findall(r"==\d+==ERROR|panicked at|deadly signal", text))
    print(f"| {t} | {runs:,} | {per_s:,} | {corp[-1] if corp else '?'} | "
          f"{cov[-1] if cov else '?'} | {crashes} |")
