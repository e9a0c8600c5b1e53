"""A seeded generator of financial-news-style sentences, for demos and load tests.

The sentences are synthetic: good for exercising the pipelines at any size,
never for quality claims (use the real corpora in ``../shared/data`` for those).
Over ten million distinct sentences are possible; ``generate`` returns
distinct ones in a deterministic order for a given seed.
"""
from __future__ import annotations

import argparse
import random

COMPANIES = [
    ("Apple", "AAPL"), ("Microsoft", "MSFT"), ("Alphabet", "GOOGL"), ("Amazon", "AMZN"), ("Tesla", "TSLA"),
    ("JPMorgan Chase", "JPM"), ("Goldman Sachs", "GS"), ("Exxon Mobil", "XOM"), ("Chevron", "CVX"),
    ("Pfizer", "PFE"), ("Johnson & Johnson", "JNJ"), ("Walmart", "WMT"), ("Boeing", "BA"),
    ("Intel", "INTC"), ("Nvidia", "NVDA"), ("Netflix", "NFLX"), ("Coca-Cola", "KO"), ("PepsiCo", "PEP"),
    ("Procter & Gamble", "PG"), ("Visa", "V"), ("Mastercard", "MA"), ("Ford", "F"), ("General Motors", "GM"),
    ("Caterpillar", "CAT"), ("Siemens", "SIE"), ("Nestle", "NESN"), ("Toyota", "TM"), ("Samsung", "SSNLF"),
    ("HSBC", "HSBA"), ("BP", "BP"), ("Shell", "SHEL"), ("Unilever", "ULVR"), ("Airbus", "AIR"),
    ("Novartis", "NOVN"), ("Alibaba", "BABA"), ("Sony", "SONY"), ("Oracle", "ORCL"), ("Salesforce", "CRM"),
    ("Adobe", "ADBE"), ("Starbucks", "SBUX"),
]
METRICS = ["revenue", "net income", "operating margin", "earnings per share", "free cash flow",
           "quarterly sales", "gross margin", "guidance", "dividend", "capital expenditure",
           "subscriber growth", "order backlog", "operating profit", "loan book", "same-store sales"]
UP = ["rose", "climbed", "jumped", "increased", "surged", "edged up", "rebounded"]
DOWN = ["fell", "declined", "dropped", "slipped", "plunged", "edged down", "contracted"]
PERIODS = ["in the first quarter", "in the second quarter", "in the third quarter", "in the fourth quarter",
           "for the full year", "in the first half", "year over year", "compared with a year earlier"]
YEARS = list(range(2012, 2026))
ANALYSTS = ["analysts", "investors", "the market", "Wall Street", "rating agencies", "traders"]
REACTIONS = ["welcomed the results", "remained cautious", "raised their price targets",
             "cut their forecasts", "questioned the outlook", "sent the shares higher", "sold the stock"]
TEMPLATES = [
    "{company} ({ticker}) said {metric} {move} {pct}% {period} of {year}.",
    "{company} reported that {metric} {move} to ${amount} billion {period} of {year}.",
    "Shares of {company} {move} {pct}% after the company said {metric} {move2} {period}.",
    "{ticker}: {metric} {move} {pct}% {period} of {year}, and {analysts} {reaction}.",
    "In {month} {year}, {company} said its {metric} would reach ${amount} billion.",
    "{analysts} {reaction} after {company} posted {metric} of ${amount} billion {period}.",
    "{company} shares {move} {pct}% on {weekday} as {metric} {move2} {period} of {year}.",
    "The board of {company} approved a plan after {metric} {move} {pct}% in {month} {year}.",
    "{company} ({ticker}) expects {metric} to have {move} by {pct}% {period} of {year}.",
    "On {weekday}, {company} said {metric} {move} to ${amount} billion, and {analysts} {reaction}.",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def _sentence(rng: random.Random) -> str:
    company, ticker = rng.choice(COMPANIES)
    up = rng.random() < 0.5
    moves = UP if up else DOWN
    sentence = rng.choice(TEMPLATES).format(
        company=company, ticker=ticker, metric=rng.choice(METRICS), move=rng.choice(moves),
        move2=rng.choice(UP if rng.random() < 0.5 else DOWN), pct=f"{rng.uniform(0.1, 40):.1f}",
        period=rng.choice(PERIODS), year=rng.choice(YEARS), amount=f"{rng.uniform(0.2, 120):.1f}",
        analysts=rng.choice(ANALYSTS), reaction=rng.choice(REACTIONS), month=rng.choice(MONTHS),
        weekday=rng.choice(WEEKDAYS))
    return sentence[0].upper() + sentence[1:]


def generate(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences, the same ones for the same seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        s = _sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write(path: str, n: int, seed: int = 0) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for s in generate(n, seed):
            f.write(s + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="shrink sample-corpus", description=__doc__)
    parser.add_argument("--output", required=True, help="text file to write, one sentence per line")
    parser.add_argument("--n", type=int, default=10_000, help="number of distinct sentences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write(args.output, args.n, args.seed)
    print(f"wrote {args.n} sentences to {args.output}")


if __name__ == "__main__":
    from pipelines.cli import module_main

    module_main("pipelines.sample_corpus")
