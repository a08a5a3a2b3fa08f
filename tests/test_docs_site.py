"""The docs site (mkdocs.yml, `make docs`): `mkdocs build --strict` passes (no warning: every
link between pages resolves, every docstring is read), the API reference renders the
documented names, README.md is the home page with its links into docs/ rewritten, and a
broken link does fail the build."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
    pytest.importorskip(_module, reason=f"{_module} is not installed (pip install -e '.[docs]')")
import yaml  # noqa: E402  (PyYAML: a dependency of mkdocs)

REFERENCE = os.path.join(ROOT, "docs", "reference")


def build(config: str, site: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's end-of-life banner
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config,
                           "-d", site], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("site"))
    r = build(os.path.join(ROOT, "mkdocs.yml"), out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stdout + r.stderr, r.stderr
    return out


def page(site: str, path: str) -> str:
    with open(os.path.join(site, path, "index.html"), encoding="utf-8") as f:
        return f.read()


def test_every_nav_page_is_built(site):
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        nav = yaml.safe_load(f)["nav"]

    def sources(item):
        if isinstance(item, str):
            return [item]
        if isinstance(item, list):
            return [s for i in item for s in sources(i)]
        return [s for v in item.values() for s in sources(v)]

    pages = sources(nav)
    assert len(pages) == len(set(pages)) >= 30
    for src in pages:
        path = "" if src == "index.md" else re.sub(r"(/?index)?\.md$", "", src)
        assert os.path.exists(os.path.join(site, path, "index.html")), src
    # every reference page is in the nav
    refs = {f"reference/{f}" for f in os.listdir(REFERENCE) if f.endswith(".md")}
    assert refs <= set(pages), refs - set(pages)


def test_every_reference_target_renders(site):
    for name in sorted(os.listdir(REFERENCE)):
        with open(os.path.join(REFERENCE, name), encoding="utf-8") as f:
            targets = re.findall(r"^::: (\S+)", f.read(), flags=re.M)
        html = page(site, f"reference/{name[:-3]}") if name != "index.md" else ""
        for t in targets:
            assert f'id="{t}"' in html, (name, t)


@pytest.mark.parametrize("ref, names", [
    ("plan", ["thinjax.plan.plan_from_width", "thinjax.plan.Plan.from_json",
              "thinjax.plan.validate"]),
    ("prune_spec", ["thinjax.prune.spec.PruneSpec"]),
    ("models", ["thinjax.models.resnet.ResNet", "thinjax.models.resnet.build_model"]),
    ("cost", ["thinjax.cost"]),
    ("cpu", ["thinjax.cpu.enable"]),
    ("zoo", ["thinjax.zoo"]),
])
def test_reference_documents_names(site, ref, names):
    html = page(site, f"reference/{ref}")
    for n in names:
        assert f'id="{n}"' in html, n
    if ref == "plan":
        # the docstring's own words, its example and its signature
        assert "the one shared description of a ResNet" in html
        assert "plan_from_width" in re.sub(r"<[^>]+>", "", html)
        # "Vocabulary:" then an indented list renders as a list (mkdocs_hooks.ProseLists)
        vocab = html[html.index("Vocabulary:"):]
        assert vocab.index("<ul>") < vocab.index("<code>block</code>") < vocab.index("</ul>")


def test_home_page_is_the_readme(site):
    html = page(site, "")
    assert '<h1 id="thinjax">thinjax' in html  # README.md's title
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme_links = re.findall(r"\]\(docs/([^)#]+)\.md\)", f.read())
    assert readme_links
    for target in readme_links:  # README's docs/x.md -> the site's x/
        assert f'href="{target}/"' in html, target
    assert 'href="../changelog/"' in page(site, "performance")  # docs' ../CHANGELOG.md


def test_loosen_lists():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks",
                                                  os.path.join(ROOT, "mkdocs_hooks.py"))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = "Lead:\n  * a\n    more of a\n  * b\n\nProse.\n- c\n\n- d"
    assert hooks.loosen_lists(text) == (
        "Lead:\n\n  * a\n    more of a\n  * b\n\nProse.\n\n- c\n\n- d")
    assert hooks.loosen_lists("no list\nhere") == "no list\nhere"


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The site's own settings (strict, link validation, the README hook) on a two-page site:
    README's link to a docs page resolves, one to a missing page fails the build."""
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\nBack [home](../README.md).\n")
    (tmp_path / "CHANGELOG.md").write_text("# Changes\n")
    cfg.update(docs_dir="docs", plugins=["search"],
               hooks=[os.path.join(ROOT, "mkdocs_hooks.py")],
               nav=["index.md", "page.md", "changelog.md"])
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump(cfg))
    readme = tmp_path / "README.md"

    readme.write_text("# Home\n\nSee [the page](docs/page.md).\n")
    r = build(str(config), str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
    assert 'href="page/"' in page(str(tmp_path / "ok"), "")
    assert 'href="../"' in page(str(tmp_path / "ok"), "page")  # ../README.md -> home

    readme.write_text("# Home\n\nSee [the page](docs/page.md) and [gone](docs/gone.md).\n")
    r = build(str(config), str(tmp_path / "broken"))
    assert r.returncode != 0
    assert "contains a link 'gone.md', but the target is not found" in r.stderr, r.stderr
    assert "Aborted with 1 warnings in strict mode" in r.stdout + r.stderr
