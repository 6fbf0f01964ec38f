"""Reward throughput benchmark: items/s per domain through a warm RewardPool.

    python tools/bench_rewards.py --num-workers 2 --items 200

Items are synthetic but realistic in size (a reasoning preamble before the answer), half
right and half wrong; code items carry 5 stdin/stdout tests each. Worker start-up (once per
training run) is reported separately from steady-state throughput.
"""

import argparse
import json
import random
import time

import reasoning_gym

from prorl_jax.rewards import DOMAINS, RewardPool, protections

PREAMBLE = "<think>" + "Let me reason about this carefully. " * 40 + "</think>\n"
GYM_TASKS = ["basic_arithmetic", "letter_counting", "knights_knaves", "family_relationships"]


def math_items(n, rng):
    items = []
    for i in range(n):
        a, b = rng.randint(1, 50), rng.randint(2, 60)
        answer = rf"\frac{{{a}}}{{{b}}}" if i % 2 == 0 else rf"\frac{{{a + 1}}}{{{b}}}"
        items.append(("math", PREAMBLE + rf"So the answer is $\boxed{{{answer}}}$.", f"{a}/{b}"))
    return items


def code_items(n, rng):
    tests = {"inputs": [f"{k} {k + 3}\n" for k in range(5)], "outputs": [f"{2 * k + 3}\n" for k in range(5)]}
    right = "a, b = map(int, input().split())\nprint(a + b)"
    wrong = "a, b = map(int, input().split())\nprint(a * b)"
    return [("code", PREAMBLE + f"```python\n{right if i % 2 == 0 else wrong}\n```", tests)
            for i in range(n)]


def stem_items(n, rng):
    return [("stem", PREAMBLE + f"Answer: {rng.choice('ABCD')}", "B") for _ in range(n)]


def gym_items(n, rng):
    items = []
    for i in range(n):
        task = GYM_TASKS[i % len(GYM_TASKS)]
        entry = json.loads(json.dumps(reasoning_gym.create_dataset(task, size=1, seed=i)[0]))
        answer = entry["answer"] if i % 2 == 0 else "wrong"
        items.append(("reasoning_gym", PREAMBLE + f"<answer>{answer}</answer>",
                      {"task": task, "entry": entry}))
    return items


def ifeval_items(n, rng):
    gt = {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words",
                                  "keywords:existence", "detectable_format:title"],
          "kwargs": [{}, {"num_words": 50, "relation": "at least"}, {"keywords": ["river"]}, {}]}
    body = "<<A River>>\n" + "the river runs on " * 20
    return [("ifeval", PREAMBLE + (body if i % 2 == 0 else body.replace(" on", ", on")), gt)
            for i in range(n)]


BUILDERS = {"math": math_items, "code": code_items, "stem": stem_items,
            "reasoning_gym": gym_items, "ifeval": ifeval_items}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=200, help="items per domain")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"sandbox protections: {protections()}")
    results = {}
    start = time.perf_counter()
    with RewardPool(args.num_workers, timeout_s=30, preload=args.domains) as pool:
        pool.score([(d, "", BUILDERS[d](1, rng)[0][2]) for d in args.domains])  # wait for workers
        results["startup_s"] = time.perf_counter() - start
        for domain in args.domains:
            items = BUILDERS[domain](args.items, rng)
            t = time.perf_counter()
            scores = pool.score(items)
            dt = time.perf_counter() - t
            results[domain] = {"items": len(items), "seconds": dt, "items_per_s": len(items) / dt,
                               "mean_reward": sum(scores) / len(scores), "errors": pool.errors}
    print(f"workers: {args.num_workers}, start-up incl. preload: {results['startup_s']:.1f} s")
    print(f"{'domain':<15}{'items':>7}{'seconds':>9}{'items/s':>10}{'mean reward':>13}")
    for domain in args.domains:
        r = results[domain]
        print(f"{domain:<15}{r['items']:>7}{r['seconds']:>9.2f}{r['items_per_s']:>10.1f}"
              f"{r['mean_reward']:>13.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
