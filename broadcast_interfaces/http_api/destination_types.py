"""`/types`: the destination types of this installation, and a warehouse type's table."""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from broadcast_interfaces.http_api.access import PREFIX, Caller
from broadcast_interfaces.http_api.answers import TableSchemaAnswer, TypeList
from broadcast_interfaces.http_api.errors import ApiError, declared
from destinations.registry import describe, known_types

router = APIRouter(prefix=f"{PREFIX}/types", tags=["destinations"])
Name = Annotated[str | None, Query(min_length=1, max_length=255)]


@router.get("", response_model=TypeList, responses=declared())
def destination_types(key: Caller) -> dict[str, Any]:
    """Every destination type of this installation, with its config fields."""
    return {"data": [describe(slug) for slug in known_types()]}


@router.get("/{type_name}/schema", response_model=TableSchemaAnswer, responses=declared(400, 404))
def table_schema(
    type_name: Annotated[str, Path(min_length=1, max_length=64)],
    key: Caller,
    table: Name = None,
    database: Name = None,
    schema: Name = None,
    dataset: Name = None,
) -> dict[str, Any]:
    """The CREATE TABLE statement of a warehouse type (clickhouse, snowflake, bigquery),
    the same as `broadcast destination schema`: run it once, then add the destination."""
    from destinations.warehouse_schema import WAREHOUSES, create_table

    if type_name not in WAREHOUSES:
        raise ApiError(404, "not_found", f"type: {type_name!r} has no table schema")
    try:
        statement = create_table(
            type_name, table=table, database=database, schema=schema, dataset=dataset
        )
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return {"data": {"type": type_name, "statement": statement + ";"}}
