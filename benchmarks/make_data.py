"""Write small synthetic datasets and a tiny 'pretrained' model folder for offline GPU smoke runs.

Usage: python benchmarks/make_data.py /tmp/pbdata
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

WORDS = (
    "the of and to in is was for on that with as by at from his her it an be this which or are "
    "whale ship sea captain crew boat harpoon voyage deck ocean wind storm sail night"
).split()


def main(out: Path) -> None:
    from peftbench.catalog import models

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sent = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    with open(out / "lm.jsonl", "w") as f:
        for _ in range(400):
            f.write(json.dumps({"text": sent(300)}) + "\n")
    with open(out / "summ.jsonl", "w") as f:
        for _ in range(400):
            s = sent(120)
            f.write(json.dumps({"article": s, "highlights": " ".join(s.split()[:6])}) + "\n")
    with open(out / "cls.jsonl", "w") as f:
        for _ in range(400):
            lab = rng.choice(["calm", "storm"])
            f.write(json.dumps({"text": f"{lab} {sent(40)}", "label": lab}) + "\n")
    m = models.build_random("tiny-llama", seed=0)
    m.save_pretrained(out / "tiny-llama")
    models.load_tokenizer("bytes").save_pretrained(out / "tiny-llama")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
