"""Reward throughput benchmark: items/s per domain through a warm RewardPool.

    python tools/bench_rewards.py --num-workers 2 --items 200
    python tools/bench_rewards.py --domains code --compare-layers 4   # sandbox layers A/B

Items are synthetic but realistic in size (a reasoning preamble before the answer), half
right and half wrong; code items carry 5 stdin/stdout tests each. Worker start-up (once per
training run) is reported separately from steady-state throughput.

--compare-layers R scores the code items R times each way in alternating rounds through the
same warm pool: with every sandbox layer this host supports, and without the minimal root
and the seccomp filter (the sandbox as it was before issue 17), and reports the ratio.
"""

import argparse
import dataclasses
import json
import os
import random
import time

import reasoning_gym

from prorl_jax.rewards import DOMAINS, RewardPool, code_reward, protections

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


def code_prior_layers(completion, ground_truth):
    """The code reward with the sandbox's pre-issue-17 layers (no minimal root, no seccomp);
    the pool's workers import it as `bench_rewards:code_prior_layers`."""
    old = dataclasses.replace(protections(), minimal_root=False, seccomp=False)
    return code_reward.score(completion, ground_truth, layers=old)


def compare_layers(pool, items, rounds):
    """Alternate rounds of the same items with all layers and with the prior ones."""
    seconds = {"code": 0.0, "code_prior": 0.0}
    for _ in range(rounds):
        for domain in seconds:
            t = time.perf_counter()
            scores = pool.score([(domain, c, gt) for _, c, gt in items])
            seconds[domain] += time.perf_counter() - t
            assert sum(scores) == len(items) // 2 + len(items) % 2, (domain, scores)
    n = rounds * len(items)
    rate = {d: n / s for d, s in seconds.items()}
    return {"items": n, "items_per_s": rate["code"], "prior_items_per_s": rate["code_prior"],
            "ratio": rate["code"] / rate["code_prior"]}


BUILDERS = {"math": math_items, "code": code_items, "stem": stem_items,
            "reasoning_gym": gym_items, "ifeval": ifeval_items}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=200, help="items per domain")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--compare-layers", type=int, default=0, metavar="ROUNDS",
                        help="also time code items with and without the issue-17 sandbox "
                             "layers, ROUNDS alternating rounds each")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"sandbox protections: {protections()}")
    results = {}
    start = time.perf_counter()
    extra = {"code_prior": "bench_rewards:code_prior_layers"} if args.compare_layers else None
    with RewardPool(args.num_workers, timeout_s=30, preload=args.domains,
                    extra_domains=extra) as pool:
        warm = [(d, "", BUILDERS[d](1, rng)[0][2]) for d in args.domains]
        if extra:
            warm += [("code_prior", *code_items(1, rng)[0][1:])] * args.num_workers
        pool.score(warm)  # wait for workers (and import the A/B verifier in each)
        results["startup_s"] = time.perf_counter() - start
        for domain in args.domains:
            items = BUILDERS[domain](args.items, rng)
            t = time.perf_counter()
            scores = pool.score(items)
            dt = time.perf_counter() - t
            results[domain] = {"items": len(items), "seconds": dt, "items_per_s": len(items) / dt,
                               "mean_reward": sum(scores) / len(scores), "errors": pool.errors}
        if args.compare_layers:
            results["code_layers"] = compare_layers(pool, code_items(args.items, rng),
                                                    args.compare_layers)
    print(f"workers: {args.num_workers}, start-up incl. preload: {results['startup_s']:.1f} s")
    print(f"{'domain':<15}{'items':>7}{'seconds':>9}{'items/s':>10}{'mean reward':>13}")
    for domain in args.domains:
        r = results[domain]
        print(f"{domain:<15}{r['items']:>7}{r['seconds']:>9.2f}{r['items_per_s']:>10.1f}"
              f"{r['mean_reward']:>13.2f}")
    if args.compare_layers:
        r = results["code_layers"]
        print(f"code sandbox A/B over {r['items']} items each: all layers {r['items_per_s']:.1f} "
              f"items/s, prior layers {r['prior_items_per_s']:.1f} items/s, ratio {r['ratio']:.3f}")
    results["loadavg"] = os.getloadavg()
    print(f"load average: {results['loadavg']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
