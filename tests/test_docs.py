"""Every code block of README.md and docs/*.md runs here, so the docs cannot drift from the code.

Each ```python, ```bash, ```sh, ```shell and ```console block becomes a test, found by reading
the files: a block added to any page is picked up with no change here, and fails the suite if it
does not run. Other fences (```text, a bare ```, ```json, ...: ``NOT_CODE``) hold output or layouts
and are not code; a fence in any other language fails the suite.

A block that needs context says so in an HTML comment right above its fence (invisible on
GitHub)::

    <!-- docs: setup=listing2; replace=http://127.0.0.1:9000 => {s3_endpoint} -->

Keys, separated by ``;``:

- ``setup=NAME``: the context the block runs in (see ``SETUPS``): a fresh working folder holding
  the experiment the page names, and for Python blocks a prelude that defines what the page
  assumes (helpers of an illustrative fragment, ``exp``). Without it, an empty folder.
- ``continue``: a Python block that goes on from the page's previous Python block (same script,
  run once as one test: the chain's blocks in order). ``chain=NAME`` names a block's chain, and
  ``continue=NAME`` goes on with that chain, with other blocks in between.
- ``replace=OLD => NEW``: text substituted before running, for addresses the page can only
  name (an S3 endpoint, a scheduler); NEW may use ``{s3_endpoint}`` and ``{scheduler}``.
- ``runner=pytest``: a Python block that is a test module (a store backend's conformance
  tests): it runs under pytest, which must collect and pass at least one test.
- ``volatile=A,B``: in a ```console block's printed output, lines that start with one of these
  words (times, sizes, process ids) match any line starting with the same word.
- ``exit=N``: the exit status every shell command of the block must give (default 0).
- ``serve``: in a ```console block, each command is a server that runs until stopped
  (``dagger ui``): it is started, the first line it prints must be what the page shows (its
  port may differ), the address it prints must answer an HTTP GET with a page, and then it is
  stopped.
- ``check=KIND``: the block is *declared not run*, and checked a cheaper way instead:
  ``make-dry-run`` (each ``make TARGET`` line: ``make -n TARGET`` in the repository, so the
  targets exist without recursing into ``make test``), ``pip-extras`` (each ``pip install
  'pkg[extras]'``: the package and its extras exist in pyproject.toml). Any other kind fails.

Python blocks run as real script files in a subprocess, in the working folder; shell blocks run
each command with bash there (for ```console, the lines starting with ``$ ``, and what the page
prints below a command must be what it prints: ``...`` stands for any text within a line, or
alone on a line for any number of lines; the working folder's path reads as relative), with ``dagger``
and ``python`` of this interpreter first on PATH (and ``.venv/bin/dagger`` in the folder, as the
README writes it). PYTHONPATH gives this checkout's ``src``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = {"python", "bash", "sh", "shell", "console"}
#: fences that hold no code: output, file layouts, data. Any other language is an error (```py, ```pycon
#: would otherwise be skipped without a word).
NOT_CODE = {"", "text", "json", "csv", "toml", "yaml", "ini", "diff", "svg"}
SHELL = CODE - {"python"}
KEYS = {"setup", "continue", "chain", "replace", "exit", "check", "runner", "volatile", "serve"}
CHECKS = {"make-dry-run", "pip-extras"}

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*docs:(.*?)-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    options: dict[str, str] = field(default_factory=dict)
    replaces: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_directive(text: str, where: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    options: dict[str, str] = {}
    replaces: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in KEYS:
            raise ValueError(f"{where}: unknown docs directive {key!r} (known: {sorted(KEYS)})")
        if key == "replace":
            old, sep, new = value.partition("=>")
            if not sep:
                raise ValueError(f"{where}: replace takes OLD => NEW, not {value!r}")
            replaces.append((old.strip(), new.strip()))
        else:
            options[key] = value
    return options, replaces


def read_blocks(page: Path) -> list[Block]:
    """The code blocks of one page, each with the directive above it."""
    lines = page.read_text().split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        end = i + 1
        while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page.name}:{i + 1}: unclosed code fence")
        if lang in CODE:
            body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end])
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            d = DIRECTIVE.match(lines[j]) if j >= 0 else None
            options, replaces = parse_directive(d.group(1), f"{page.name}:{i + 1}") if d else ({}, [])
            blocks.append(Block(page, i + 1, lang, body + "\n", options, replaces))
        i = end + 1
    return blocks


def units() -> list[list[Block]]:
    """The tests: one per block, except that a ``continue`` block joins the page's previous Python unit."""
    out: list[list[Block]] = []
    for page in PAGES:
        last_python: list[Block] | None = None
        chains: dict[str, list[Block]] = {}
        for block in read_blocks(page):
            if "continue" in block.options:
                name = block.options["continue"]
                chain = chains.get(name) if name else last_python
                if block.lang != "python" or chain is None:
                    raise ValueError(f"{block.where}: `continue` needs a Python block after another one")
                chain.append(block)
                continue
            unit = [block]
            out.append(unit)
            if block.lang == "python":
                last_python = unit
            if block.options.get("chain"):
                chains[block.options["chain"]] = unit
    return out


UNITS = units()


# ---- contexts --------------------------------------------------------------------------------


def _env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(ROOT / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    if extra_path:
        env["PATH"] = extra_path + os.pathsep + env.get("PATH", "")
    env["DAGGER_PROGRESS"] = "0"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _build(script: str, cwd: Path, timeout: int = 600) -> None:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"building the docs' experiment failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """The experiments the pages name, built once per session (copied into each block's folder)."""
    return {}


def _experiment(name: str, built: dict[str, Path], tmp_path_factory) -> Path:
    if name in built:
        return built[name]
    where = tmp_path_factory.mktemp(f"docs-{name}")
    if name == "listing2":  # the paper's Listing 2, as docs/cli.md says (tests/paperdefs.py)
        _build(
            f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "from paperdefs import listing2\nlisting2('runs/prune')\n",
            where,
        )
    elif name == "pruning":  # the README's pruning study, full size (about 20 s); drawing left out
        _build(
            f"import sys; sys.path.insert(0, {str(ROOT / 'examples' / 'pruning')!r})\n"
            "import torch, dagger as dg, study\ntorch.set_num_threads(1)\n"
            "exp = dg.Experiment('runs/pruning', state_class=study.State)\n"
            "study.define(exp)\nexp.run(progress=False)\n",
            where,
        )
    else:  # pragma: no cover - a typo in SETUPS
        raise KeyError(name)
    built[name] = where
    return where


#: setup name -> (experiments to copy into the working folder, Python prelude)
SETUPS: dict[str, tuple[list[str], str]] = {
    "": ([], ""),
    # the README's "In one page" fragment: small, real helpers for the names it leaves undefined
    "one-page": (
        [],
        """
import numpy as np

def get_data(dataset_name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = (x[:, 0] - x[:, 1] > 0).astype(float)
    return (x[:150], y[:150]), (x[150:], y[150:])

def get_model(model_name):
    return {"w": np.zeros(8)}

def train_model(model, data, nb_epochs, lr):
    x, y = data
    for _ in range(nb_epochs):
        p = 1 / (1 + np.exp(-x @ model["w"]))
        model["w"] -= lr * x.T @ (p - y) / len(y)

def eval_model(model, data):
    x, y = data
    return float(((x @ model["w"] > 0) == y).mean())
""",
    ),
    "listing2": (["listing2"], "import dagger as dg\nfrom paperdefs import State, TrainRecipe, PruneRecipe\n"),
    "pruning": (["pruning"], ""),
    # a page that works on `exp`, the study restored
    "pruning-exp": (
        ["pruning"],
        "import sys\nsys.path.insert(0, 'examples/pruning')\nimport dagger as dg\n"
        "exp = dg.Experiment.restore('runs/pruning')\n",
    ),
    # the user guide builds the study itself, from helpers of examples/pruning/study.py
    "guide": ([], "import sys\nsys.path.insert(0, 'examples/pruning')\n"),
    # an S3-compatible server holding the bucket `lab-bucket`, with Listing 2 at s3://lab-bucket/runs/prune
    "s3": ([], "import dagger as dg\nfrom paperdefs import State\n"),
    # "a new backend": a real one, a local store under another name
    "store-backend": ([], "from dagger.store import LocalStore\n\nclass MyStore(LocalStore):\n    pass\n"),
}


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    """The bucket the pages name, `lab-bucket`, on the session's S3-compatible server."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="lab-bucket")
    return s3_server


@pytest.fixture(scope="session")
def s3_listing2(s3_bucket, built, tmp_path_factory):
    """Listing 2 copied to s3://lab-bucket/runs/prune."""
    import fsspec

    local = _experiment("listing2", built, tmp_path_factory) / "runs" / "prune"
    fs = fsspec.filesystem("s3", endpoint_url=s3_bucket, key="testing", secret="testing", skip_instance_cache=True)
    fs.put(str(local), "lab-bucket/runs/", recursive=True)
    assert fs.exists("lab-bucket/runs/prune/experiment.json")
    return "s3://lab-bucket/runs/prune"


@pytest.fixture(scope="session")
def scheduler(s3_server):
    """A real Dask cluster (one worker process) that can import the study and the tests' definitions, and
    reaches the session's S3 server (its workers inherit the credentials ``s3_server`` puts in the environment)."""
    distributed = pytest.importorskip("distributed")  # the [test] extra installs it
    for folder in (ROOT / "examples" / "pruning", ROOT / "tests"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))  # spawned workers start with this sys.path
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _workdir(tmp_path: Path, names: list[str], built, tmp_path_factory) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for name in names:
        src = _experiment(name, built, tmp_path_factory)
        shutil.copytree(src / "runs", work / "runs", dirs_exist_ok=True)
    (work / "examples").symlink_to(ROOT / "examples")
    (work / "benchmarks").symlink_to(ROOT / "benchmarks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dagger = bin_dir / "dagger"
    src = ROOT / "src"  # first, also under a command's own `PYTHONPATH=...`
    dagger.write_text(
        f'#!/bin/sh\nPYTHONPATH="{src}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} -m dagger.cli "$@"\n'
    )
    dagger.chmod(0o755)
    python = bin_dir / "python"  # a script, not a link: a link to a venv's python leaves the venv
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "dagger").symlink_to(dagger)
    return work


def _substitute(unit: list[Block], request) -> list[str]:
    codes = []
    for block in unit:
        code = block.code
        for old, new in block.replaces:
            values = {}
            if "{s3_endpoint}" in new:
                values["s3_endpoint"] = request.getfixturevalue("s3_bucket")
            if "{scheduler}" in new:
                values["scheduler"] = request.getfixturevalue("scheduler")
            assert old in code, f"{block.where}: replace={old!r} does not occur in the block"
            code = code.replace(old, new.format(**values))
        codes.append(code)
    return codes


def _console(code: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, the output lines the page shows for it)."""
    out: list[tuple[str, list[str]]] = []
    for line in code.rstrip("\n").splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return [(cmd, lines[:-1] if lines and not lines[-1].strip() else lines) for cmd, lines in out]


def _output_pattern(expected: list[str], volatile: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        line = line.rstrip()
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        stripped = line.lstrip()
        word = next((w for w in volatile if stripped.startswith(w)), None)
        if word is not None:
            parts.append(re.escape(line[: len(line) - len(stripped) + len(word)]) + r"[^\n]*\n")
        else:
            parts.append(r"[^\n]*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def _check_output(block: Block, command: str, expected: list[str], printed: str, work: Path) -> None:
    volatile = [w.strip() for w in block.options.get("volatile", "").split(",") if w.strip()]
    actual = "".join(line.rstrip() + "\n" for line in printed.replace(f"{work}/", "").splitlines())
    if not _output_pattern(expected, volatile).fullmatch(actual):
        shown = "\n".join(expected)
        raise AssertionError(f"{block.where}: `{command}` printed\n{actual}\nbut the page shows\n{shown}")


def _commands(block: Block, code: str) -> list[str]:
    if block.lang == "console":
        cmds = [line[2:] for line in code.splitlines() if line.startswith("$ ")]
        assert cmds, f"{block.where}: a console block needs `$ ` command lines; write output-only blocks as ```text"
        return cmds
    return [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _serve(block: Block, command: str, expected: list[str], work: Path, env: dict[str, str]) -> None:
    """Start a server command, check the line it prints and that its address serves a page, stop it."""
    import select
    import signal
    import urllib.request

    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, f"{block.where}: `{command}` printed nothing in 120 s"
        first = proc.stdout.readline()
        assert proc.poll() is None, f"{block.where}: `{command}` stopped at once:\n{first}{proc.stdout.read()}"
        shown = [re.sub(r"(127\.0\.0\.1|localhost):\d+", r"\1:...", line) for line in expected[:1]]
        _check_output(block, command, shown, first, work)
        url = re.search(r"https?://\S+?(?=[\s)]|$)", first)
        assert url, f"{block.where}: `{command}` printed no address: {first!r}"
        with urllib.request.urlopen(url.group(0), timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read(4096).lower(), f"{block.where}: {url.group(0)}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# ---- the declared-not-run checks -------------------------------------------------------------


def _check(block: Block) -> None:
    kind = block.options["check"]
    lines = _commands(block, block.code)
    assert kind in CHECKS, f"{block.where}: unknown check {kind!r} (known: {sorted(CHECKS)})"
    if kind == "make-dry-run":  # `make demo` and `make test` must not recurse into the suite
        for line in lines:
            words = line.split("#")[0].split()
            assert words[0] == "make" and len(words) > 1, f"{block.where}: not a make command: {line}"
            done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, f"{block.where}: make -n {' '.join(words[1:])}: {done.stderr}"
    elif kind == "pip-extras":
        text = (ROOT / "pyproject.toml").read_text()  # read by hand: tomllib is 3.11+
        name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M).group(1)
        section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
        extras = set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, re.M))
        for line in lines:
            m = re.search(r"pip install '([^'\[]+)\[([^\]]*)\]'", line)
            assert m, f"{block.where}: not a `pip install 'pkg[extras]'` line: {line}"
            assert m.group(1) == name, f"{block.where}: the package is {name}"
            for extra in m.group(2).split(","):
                assert extra in extras, f"{block.where}: no extra {extra!r} in pyproject.toml ({sorted(extras)})"


# ---- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS, ids=[u[0].where for u in UNITS])
def test_doc_block_runs(unit: list[Block], tmp_path, built, tmp_path_factory, request):
    head = unit[0]
    if "check" in head.options:
        _check(head)
        return
    setup = head.options.get("setup", "")
    assert setup in SETUPS, f"{head.where}: unknown setup {setup!r} (known: {sorted(SETUPS)})"
    names, prelude = SETUPS[setup]
    work = _workdir(tmp_path, names, built, tmp_path_factory)
    if setup == "s3":
        request.getfixturevalue("s3_listing2")
    if setup in ("s3", "listing2"):
        env_tests = str(ROOT / "tests")
    else:
        env_tests = ""
    env = _env(str(tmp_path / "bin"))
    if env_tests:
        env["PYTHONPATH"] += os.pathsep + env_tests
    codes = _substitute(unit, request)
    if head.lang == "python":
        script = work / "test_doc_block.py"
        script.write_text(prelude + "\n" + "\n".join(codes))
        runner = head.options.get("runner", "python")
        assert runner in ("python", "pytest"), f"{head.where}: unknown runner {runner!r}"
        command = [sys.executable, str(script)]
        if runner == "pytest":
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        where = ", ".join(b.where for b in unit)
        assert done.returncode == 0, f"{where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        return
    status = int(head.options.get("exit", "0"))
    shown = dict(_console(codes[0])) if head.lang == "console" else {}
    if "serve" in head.options:
        assert head.lang == "console", f"{head.where}: serve= needs a console block"
        for command in _commands(head, codes[0]):
            _serve(head, command, shown.get(command, []), work, env)
        return
    for command in _commands(head, codes[0]):
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == status, (
            f"{head.where}: `{command}` exited {done.returncode}, not {status}:\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )
        if shown.get(command):
            _check_output(head, command, shown[command], done.stdout + done.stderr, work)


def test_every_page_is_read_and_every_block_is_a_test():
    """The runner sees each page's code fences: a page of code blocks cannot silently drop out."""
    fences = 0
    for page in PAGES:
        fences += sum(
            1
            for line in page.read_text().splitlines()
            if FENCE.match(line) and FENCE.match(line).group(2).lower() in CODE
        )
    assert fences == sum(len(u) for u in UNITS) > 20
    assert {b.page.name for u in UNITS for b in u} >= {"README.md", "cli.md", "guide.md", "storage.md"}


def test_printed_output_is_compared():
    """`...` is any text (or, alone, any lines); volatile words match any value; the rest is exact."""
    pattern = _output_pattern(["a ... z", "...", "created  2026-01-01", "end"], ["created"])
    assert pattern.fullmatch("a b c z\nx\ny\ncreated  2031-05-05 10:00\nend\n")
    assert pattern.fullmatch("a - z\ncreated  x\nend\n")
    assert not pattern.fullmatch("a b c z\ncreated  x\nEND\n")
    assert not pattern.fullmatch("b z\ncreated  x\nend\n")


def test_every_fence_says_what_it_holds():
    """A fence is code (and runs) or declared not code: ```py or ```pycon cannot slip past the runner."""
    unknown = [
        f"{page.relative_to(ROOT)}:{n}: ```{m.group(2)}"
        for page in PAGES
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if (m := FENCE.match(line)) and m.group(2).lower() not in CODE | NOT_CODE
    ]
    assert not unknown, f"write ```python / ```console for code, ```text for output: {unknown}"


def test_directives_are_checked(tmp_path):
    """A misspelt directive is an error, never a silently ignored option."""
    page = tmp_path / "page.md"
    page.write_text("<!-- docs: setpu=listing2 -->\n```bash\ndagger --help\n```\n")
    with pytest.raises(ValueError, match="unknown docs directive 'setpu'"):
        read_blocks(page)
    page.write_text("<!-- docs: setup=listing2; replace=x -->\n```bash\ndagger --help\n```\n")
    with pytest.raises(ValueError, match="replace takes OLD => NEW"):
        read_blocks(page)
    page.write_text("<!-- docs: setup=pruning -->\n\n```python\nprint(1)\n```\n```text\nout\n```\n")
    (block,) = read_blocks(page)
    assert block.options == {"setup": "pruning"} and block.code == "print(1)\n" and block.line == 3


def test_readme_results_table_is_what_the_study_prints(built, tmp_path_factory):
    """The README's table of the pruning study (a ```text block) is the study's own output, digit for digit."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"```text\n(state +recipe .*?)```", readme, re.S)
    assert m, "README.md lost its results table"
    work = _experiment("pruning", built, tmp_path_factory)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT / 'examples' / 'pruning')!r})\n"
            "import dagger as dg, study\nprint(study.results_table(dg.Experiment.restore('runs/pruning')))",
        ],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == m.group(1).strip()
