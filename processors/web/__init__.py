"""The product teams' page: `journeys serve` (live, aiohttp) and `journeys report` (one static HTML file).

Both draw the same page (`page.html`, `page.js`) with Plotly from the
installed `plotly` package: no CDN, works offline. The live page asks
`/api/*` for data, every filter travelling as a query parameter into
parameterised ClickHouse queries (`processors.insights`); the report embeds
the same responses in the file.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.client import Client

from processors import insights
from processors.insights import FilterError, Filters
from processors.storage import json_default

EXAMPLES_PER_POINT = 20


def asset(name: str) -> bytes:
    if name == "plotly.min.js":
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return (resources.files(__name__) / name).read_bytes()


def dumps(value: Any) -> str:
    return json.dumps(value, default=json_default, ensure_ascii=False)


def _point(query: dict[str, str]) -> dict[str, str]:
    return {key: query.get(f"point_{key}", "") for key in _POINT}


def create_web_app(client: Client) -> web.Application:
    """The live page. ClickHouse calls run on one worker thread: a chDB client is not shared by threads."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    async def run(function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=asset("page.html"), content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("page.js", "plotly.min.js"):
            raise web.HTTPNotFound()
        return web.Response(
            body=asset(name),
            content_type="application/javascript",
            charset="utf-8",
            headers={"Cache-Control": "max-age=3600"},
        )

    def answer(value: Any) -> web.Response:
        return web.Response(text=dumps(value), content_type="application/json")

    async def api(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        query = dict(request.query)
        try:
            if name == "options":
                return answer(await run(insights.filter_options, client))
            filters = Filters.parse(query)
            if name == "all":
                return answer(await run(insights.everything, client, filters))
            if name == "dropoff-examples":
                point = _point(query)
                return answer(
                    await run(insights.dropoff_examples, client, filters, point, EXAMPLES_PER_POINT)
                )
            if name == "timeline":
                customer = query.get("customer", "")
                if not customer:
                    raise FilterError("timeline needs ?customer=")
                return answer(await run(insights.timeline, client, customer))
        except FilterError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        raise web.HTTPNotFound(
            text=dumps({"error": f"no such data: {name}"}), content_type="application/json"
        )

    async def close(_: web.Application) -> None:
        executor.shutdown(wait=False)

    app = web.Application()
    app.add_routes(
        [
            web.get("/", page),
            web.get("/assets/{name}", static),
            web.get("/api/{name}", api),
        ]
    )
    app.on_cleanup.append(close)
    return app


def report_html(client: Client, timelines_per_point: int = 3) -> str:
    """The page as one self-contained file: scripts inlined, every response it will ask for embedded."""
    filters = Filters()
    everything = insights.everything(client, filters)
    responses: dict[str, Any] = {
        static_key("options", {}): insights.filter_options(client),
        static_key("all", {}): everything,
    }
    for point in everything["dropoffs"]:
        examples = insights.dropoff_examples(client, filters, point, EXAMPLES_PER_POINT)
        responses[
            static_key("dropoff-examples", {f"point_{k}": v for k, v in point.items() if k in _POINT})
        ] = examples
        for example in examples[:timelines_per_point]:
            customer = example["customer_id"]
            responses[static_key("timeline", {"customer": customer})] = insights.timeline(client, customer)
    data = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "responses": responses}
    html = asset("page.html").decode("utf-8")
    embedded = _script_safe(dumps(data))
    inline = {
        "<script>window.JOURNEYS_DATA = null;</script>": f"<script>window.JOURNEYS_DATA={embedded};</script>",
        '<script src="assets/plotly.min.js"></script>': _inline_script("plotly.min.js"),
        '<script src="assets/page.js"></script>': _inline_script("page.js"),
    }
    for tag, replacement in inline.items():
        if tag not in html:
            raise RuntimeError(f"page.html lost its {tag!r}")
        html = html.replace(tag, replacement)
    return html


_POINT = ("phase", "channel", "action", "detail")


def static_key(path: str, params: dict[str, str]) -> str:
    """How page.js looks up a response in a report: the path and its non-empty parameters, sorted."""
    entries = sorted([key, str(value)] for key, value in params.items() if value not in ("", None))
    return path + " " + json.dumps(entries, ensure_ascii=False, separators=(",", ":"))


def _inline_script(name: str) -> str:
    return f"<script>{_script_safe(asset(name).decode('utf-8'))}</script>"


def _script_safe(text: str) -> str:
    # Only a literal "</script" would end the inline <script> element early.
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)
