"""What the scheduled training flows share: run one job over every ingested repository, failures apart."""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger


def each_repository(job: Callable[[str], dict], *, what: str) -> dict[str, dict]:
    """`job(name)` for every ingested repository except the derived eval indexes, by name.

    One repository's bad data must not stop the others' scheduled run: a failure is logged and the
    rest still run; the flow then fails, naming the repositories that failed and those that finished.
    """
    from grounding.index.refresh import repositories

    results, failed = {}, []
    for name in repositories():
        try:
            results[name] = job(name)
        except Exception as err:
            get_run_logger().error("%s of %s failed: %s", what, name, err)
            failed.append(name)
    if failed:
        raise RuntimeError(f"{what} failed for {', '.join(failed)}; the others finished: {list(results)}")
    return results
