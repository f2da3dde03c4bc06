#!/usr/bin/env python3
"""python scripts/make_demo_data.py  -- regenerates sft/resources/demo_{train,eval}.jsonl (seeded, stable).

The demo task: read a short product review and answer in a made-up, strict format,

    {"product": "<noun>", "sentiment": "positive|negative"}

which the base SmolLM2 does not produce before fine-tuning (it answers in prose) and reproduces exactly after.
Half the records carry the review in `input`, half inline in the instruction, so both Alpaca templates train.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PRODUCTS = [
    "blender", "backpack", "kettle", "laptop", "headphones", "umbrella", "toaster", "bicycle", "lamp", "keyboard",
    "camera", "jacket", "printer", "guitar", "tent", "watch", "sofa", "drill", "mattress", "phone case",
    "coffee maker", "monitor", "vacuum", "scarf", "speaker", "notebook", "mixer", "router", "pillow", "stroller",
]
POSITIVE = [
    "works perfectly", "exceeded my expectations", "is worth every penny", "feels really sturdy",
    "arrived early and works great", "is the best I have owned", "made my mornings easier", "looks beautiful",
]
NEGATIVE = [
    "broke after two days", "is a waste of money", "stopped working within a week", "feels cheap and flimsy",
    "arrived damaged", "is the worst purchase I made this year", "never worked properly", "smells terrible",
]
OPENERS = ["I bought this {p} last month and it {v}.", "This {p} {v}.", "My new {p} {v}, honestly.",
           "After a few weeks of use, the {p} {v}.", "Gift for my sister: the {p} {v}."]
CLOSERS = ["", " Would not recommend.", " Highly recommended!", " Customer service was slow.", " Five stars."]
INSTRUCTION = "Label the product review with its product and sentiment as JSON."


def record(rng: random.Random) -> dict[str, str]:
    product = rng.choice(PRODUCTS)
    sentiment = rng.choice(["positive", "negative"])
    verb = rng.choice(POSITIVE if sentiment == "positive" else NEGATIVE)
    closer = rng.choice([c for c in CLOSERS if not (sentiment == "positive" and "not" in c)
                         and not (sentiment == "negative" and ("Highly" in c or "Five" in c))])
    review = rng.choice(OPENERS).format(p=product, v=verb) + closer
    output = json.dumps({"product": product, "sentiment": sentiment})
    if rng.random() < 0.5:
        return {"instruction": INSTRUCTION, "input": review, "output": output}
    return {"instruction": f"{INSTRUCTION}\nReview: {review}", "input": "", "output": output}


def main() -> None:
    rng = random.Random(20261122)
    out = Path(__file__).resolve().parent.parent / "sft" / "resources"
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("demo_train.jsonl", 320), ("demo_eval.jsonl", 40)):
        with open(out / name, "w") as f:
            for _ in range(n):
                f.write(json.dumps(record(rng)) + "\n")


if __name__ == "__main__":
    main()
