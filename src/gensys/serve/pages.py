"""Web pages served by the same app: plain HTML + JS files in `serve/static/`, no build step.

Each page talks to the /v1 API like any client would (so the pages double as API examples). A strict
Content-Security-Policy allows only this server's own scripts and styles: model output is inserted as text,
and even if it were not, inline script could not run.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
PAGES = {
    "/": "index.html",
    "/compose": "compose.html",
    "/translate": "translate.html",
    "/chat": "chat.html",
    "/caption": "caption.html",
    "/rag": "rag.html",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


def _page(file: str):  # noqa: ANN202 - a FastAPI route function
    async def page() -> FileResponse:
        return FileResponse(
            STATIC / file,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    page.__name__ = f"page_{file.split('.')[0]}"
    return page


for _route, _file in PAGES.items():
    router.add_api_route(_route, _page(_file), methods=["GET"])


def mount_static(app: FastAPI) -> None:
    """Serve the pages' scripts and styles under /static/."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


__all__ = ["PAGES", "mount_static", "router"]
