"""An HTML template for ``dvc plots show`` that draws without a network.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. The template written
here inlines the three libraries from a Python package (``django-js-lib-vega-embed``, the ``plots`` extra: plain
JavaScript files, no Django needed to read them) and has no ``{scripts}`` placeholder, so DVC adds no CDN tags::

    python -m pipeline.io.plots_page                  # writes .dvc/plots/offline.html (git-ignored)
    dvc plots show --html-template .dvc/plots/offline.html

or once per clone ``dvc config --local plots.html_template plots/offline.html`` (relative to ``.dvc/``), then
plain ``dvc plots show``.
"""

from __future__ import annotations

import argparse
from importlib import metadata, resources
from pathlib import Path

from pipeline.io.errors import ConfigError, run_main
from pipeline.io.files import atomic_path

DEFAULT_OUT = Path(".dvc/plots/offline.html")
PACKAGE = "js_lib_vega_embed"
"""The module of the ``django-js-lib-vega-embed`` distribution; its static folder holds the libraries."""
LIBRARIES = ("vega5.js", "vega-lite5.js", "vega-embed6.js")
"""In load order: vega-lite needs vega, vega-embed needs both (each a UMD build defining a global)."""
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
"""What DVC replaces anywhere in a template (dvc_render's HTML.embed); only the page may contain them."""
INSTALL_HINT = "pip install -e '.[plots]'"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {source}, inlined by python -m pipeline.io.plots_page: the page needs no network -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library_scripts() -> tuple[str, list[str]]:
    """The installed distribution (``name version``) and the text of each of :data:`LIBRARIES`; a missing package
    or file, or a text that cannot sit inside a ``<script>`` of a DVC template, is a one-line ConfigError."""
    try:
        folder = resources.files(PACKAGE) / "static" / PACKAGE
    except ModuleNotFoundError:
        raise ConfigError(f"the offline plots page needs the vega libraries: {INSTALL_HINT}") from None
    source = f"django-js-lib-vega-embed {metadata.version('django-js-lib-vega-embed')}"
    texts = []
    for name in LIBRARIES:
        library = folder / name
        if not library.is_file():
            raise ConfigError(f"{source} has no {name} (the plots extra expects vega 5 files): {INSTALL_HINT}")
        text = library.read_text(encoding="utf-8")
        clash = next((word for word in ("</script", *DVC_PLACEHOLDERS) if word in text), None)
        if clash:
            raise ConfigError(f"{source}: {name} contains '{clash}' and cannot be inlined in a DVC template")
        texts.append(text)
    return source, texts


def offline_template() -> str:
    """The page: DVC's default one with the libraries inlined in place of its ``{scripts}`` (the CDN tags)."""
    source, texts = library_scripts()
    scripts = "\n".join(f'    <script type="text/javascript">\n{text}\n    </script>' for text in texts)
    return PAGE.format(source=source, scripts=scripts)


def main() -> None:
    """``python -m pipeline.io.plots_page [--out PATH]``: write a ``dvc plots show`` HTML template that draws the
    plots without a network (``dvc plots show --html-template PATH``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"template to write (default {DEFAULT_OUT})")
    args = parser.parse_args()
    text = offline_template()
    with atomic_path(args.out, ".html") as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: dvc plots show --html-template {args.out}")


if __name__ == "__main__":
    run_main(main)
