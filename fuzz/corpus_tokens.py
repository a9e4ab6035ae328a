"""Writes the conformance corpus's tokens into a fuzz corpus directory, one file per case,
at run time: the corpus stays where it is (../shared/conformance/jwt) and is never copied
into the project. Says so plainly when the corpus is absent."""
import json
import os
import sys

corpus, out = sys.argv[1], sys.argv[2]
cases = os.path.join(corpus, "cases.jsonl")
os.makedirs(out, exist_ok=True)
if not os.path.exists(cases):
    print(f"conformance tokens NOT added to the token fuzz corpus: {cases} is absent")
    sys.exit(0)
n = 0
with open(cases) as f:
    for line in f:
        if line.strip():
            case = json.loads(line)
            name = "conformance-" + "".join(c if c.isalnum() else "_" for c in case["id"])
            with open(os.path.join(out, name), "w") as t:
                t.write(case["token"])
            n += 1
print(f"{n} conformance tokens added to the token fuzz corpus ({out})")
