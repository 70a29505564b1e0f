"""local-bigquery (BigQuery's REST API on DuckDB), started from its own virtualenv.

Run from `.venv-bigquery` (Python 3.13, see the Makefile):

    .venv-bigquery/bin/python -m tests.emulators.bigquery_engine --port P --grpc-port G \
        --project proj-1234 --dataset openrouter --data-dir DIR

local-bigquery attaches its tables through DuckDB's ducklake extension (and uses icu and
spatial), which DuckDB would download on first use. There is no network for that here:
the `duckdb-extension-*` wheels carry the extensions, and they are installed into DuckDB's
extension directory at every start (idempotent, milliseconds), so the engine does not
depend on what an earlier `make setup` left in the home directory.

The engine grants every caller everything: who may do what is `bigquery_front`'s job.

One fidelity fix is applied to local-bigquery 0.3.2 (`_alias_in_nan_rank`): BigQuery resolves
an ORDER BY name to the SELECT alias it matches, which OpenRouter's own queries rely on
(`SUM(total_cost) as total_cost ... ORDER BY total_cost DESC`), and the engine breaks that.
"""

from __future__ import annotations

import sys
from typing import Any

EXTENSIONS = ("ducklake", "icu", "spatial")


def _alias_in_nan_rank() -> None:
    """Make local-bigquery's NaN ordering resolve ORDER BY aliases as BigQuery does.

    To order NaN as BigQuery does, the engine puts a `CASE WHEN x IS NULL ... isnan(x)`
    key before each FLOAT64 ORDER BY key `x`. DuckDB binds an alias in ORDER BY only when
    it stands alone, so inside that CASE the name `total_cost` binds to the table's column,
    and a grouped query is refused ("column total_cost must appear in the GROUP BY
    clause"). Here the CASE that rule adds gets the aliased SELECT expression itself; the
    user's own ORDER BY keys are left as they are.
    """
    from local_bigquery.sql import rules
    from local_bigquery.sql.rules import typing as typing_rules
    from sqlglot import exp

    original = typing_rules.nan_first

    def nan_first(node: exp.Expression, context: Any) -> exp.Expression:
        given = {id(item) for item in getattr(node, "expressions", ())}
        node = original(node, context)
        select = node.parent
        if not isinstance(node, exp.Order) or not isinstance(select, exp.Select):
            return node
        aliases = {
            item.alias.casefold(): item.this
            for item in select.expressions
            if isinstance(item, exp.Alias)
        }
        for ordered in node.expressions:
            if id(ordered) in given:  # the user's key, not a rank the rule added
                continue
            for column in list(ordered.find_all(exp.Column)):
                target = aliases.get(column.name.casefold())
                if not column.table and target is not None:
                    column.replace(target.copy())
        return node

    rules.NODE_RULES[rules.NODE_RULES.index(original)] = nan_first


def main(argv: list[str]) -> None:
    from duckdb_extensions import import_extension
    from local_bigquery.cli import main as serve

    for name in EXTENSIONS:
        import_extension(name)
    _alias_in_nan_rank()
    serve(["serve", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
