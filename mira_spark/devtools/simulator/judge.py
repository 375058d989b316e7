"""Deterministic, content-based judgement standing in for the 35B scorer (simulator only).

Takes a document text, its source name and the rubric's ``(slot, dimension name)`` pairs; gives a
:class:`Judgement` (a 0-10 score and a short rationale per slot, plus overall / recommendation /
domain tag / brief) and renders it in the scorer's exact output format.

The scores follow what the document contains, so better documents score higher: semantic tags,
accessibility attributes, responsive CSS, script quality, Chinese prose, code layout, performance
hints and the number of features. Dimensions are mapped to these facets by keywords in their English
names, so any rubric works (Python code facets — docstrings, tests, type annotations, exception
handling, naming, dangerous calls — serve the demo's code rubric); unknown names get a
content-hash-based score. Everything is a pure
function of the inputs (hashlib, never global random) and a 30 KB document is judged in about a
millisecond: a handful of ``str.count`` calls and precompiled regexes over one lowered copy.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from mira_spark.prompting.prompts import DOC_BEGIN

SCORE_MIN = 0.0
SCORE_MAX = 10.0
KEEP_AT = 65  # overall >= KEEP_AT -> keep
DOWNSAMPLE_AT = 45  # overall >= DOWNSAMPLE_AT -> downsample, else drop
JITTER = 0.5  # +- per-slot spread derived from the text hash, in score points
# Longer documents are judged on their head and tail (counts scaled to the full length), which keeps a
# judgement under ~2 ms whatever the length; the median document (~8.5K chars) is read whole.
SAMPLE_HEAD_CHARS = 12_000
SAMPLE_TAIL_CHARS = 4_000

TEMPLATE_LINE = re.compile(r"^\[(A\d{1,2})\]\s*([^:\n]+?):\s*<score>/10\b", re.MULTILINE)

# Plain substring counts (str.count) keep a 30 KB document well under 2 ms; regexes over the whole text
# were several times slower.
CJK_SENTENCE_PUNCT = ("。", "，", "、", "；")
SEMANTIC_TAGS = ("<header", "<nav", "<main", "<section", "<article", "<footer")
A11Y_MARKS = ("aria-", "alt=", "role=", "<label")
LAYOUT_MARKS = ("flex", "grid", "clamp(")
PERF_MARKS = ("lazy", "defer", "debounce", "throttle", "requestanimationframe")
VISUAL_MARKS = ("transition", "shadow", "radius", ":hover", "gradient")
SAFE_MARKS = ("textcontent", "noopener")
UNSAFE_MARKS = ("eval(", "innerhtml", "document.write")
COMMENT_MARKS = ("<!--", "/*", "// ")
HEADING_MARKS = ("</h1>", "</h2>", "</h3>", "\n#")
# Python code (the demo's second rubric, anchors/code/): counted with str.count like the rest.
PY_UNSAFE_MARKS = ("eval(", "exec(", "os.system(", "shell=true", "pickle.loads(")
PY_TYPE_MARKS = ("-> ", ": int", ": str", ": float", ": list", ": dict", ": bool")
PY_DEF = re.compile(r"^\s*def ([A-Za-z_]\w*)", re.MULTILINE)
DOMAIN_TAGS = (
    (("game", "游戏", "canvas"), "html-game"),
    (("dashboard", "chart", "图表", "数据可视化"), "data-visualization"),
    (("<form", "表单", "login", "登录"), "html-form"),
    (("landing", "着陆页", "落地页", "hero"), "landing-page"),
    (("todo", "待办", "calculator", "计算器"), "web-tool"),
)


@dataclass(frozen=True)
class Judgement:
    """The simulator's judgement of one document."""

    scores: dict[str, float]  # slot ("A1".."A15") -> 0..10, rounded to 0.5
    rationales: dict[str, str]  # slot -> short rationale
    overall: int  # 0..100
    training_recommendation: str  # keep | downsample | drop
    domain_tag: str
    brief: str


@dataclass(frozen=True)
class _Features:
    """Raw counts from one pass over the document."""

    chars: int
    cjk: int
    punct: int
    lines: int
    indented: int
    comments: int
    semantic: int
    divs: int
    a11y: int
    media: int
    layout: int
    viewport: bool
    scripts: int
    listeners: int
    modern_decl: int
    var_decl: int
    functions: int
    inline_handlers: int
    unsafe: int
    safe: int
    perf: int
    visual: int
    headings: int
    list_items: int
    has_html: bool
    open_close_balance: float
    py_defs: int
    py_docstrings: int  # triple-quote marks (two per docstring)
    py_tests: int
    py_asserts: int
    py_types: int
    py_raises: int
    py_excepts: int
    py_bare_excepts: int
    py_unsafe: int
    py_named: float  # share of function names that are descriptive (>= 5 chars, snake_case words)


def _sample(text: str) -> str:
    if len(text) <= SAMPLE_HEAD_CHARS + SAMPLE_TAIL_CHARS:
        return text
    return text[:SAMPLE_HEAD_CHARS] + "\n" + text[-SAMPLE_TAIL_CHARS:]


def _features(text: str, low: str) -> _Features:
    """Counts over ``text`` (already sampled) and its lowered copy ``low``."""
    count = low.count
    opens = count("<div")
    closes = count("</div>")
    balance = 1.0 if opens == closes else min(opens, closes) / max(opens, closes)
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    punct = sum(text.count(p) for p in CJK_SENTENCE_PUNCT)
    names = PY_DEF.findall(text) if "def " in text else []
    return _Features(
        chars=len(text),
        cjk=max(non_ascii - punct, 0),  # non-ASCII letters: nearly all CJK in this corpus
        punct=punct,
        lines=count("\n") + 1,
        indented=count("\n  ") + count("\n\t"),
        comments=sum(count(mark) for mark in COMMENT_MARKS),
        semantic=sum(count(tag) for tag in SEMANTIC_TAGS),
        divs=opens,
        a11y=sum(count(mark) for mark in A11Y_MARKS),
        media=count("@media"),
        layout=sum(count(mark) for mark in LAYOUT_MARKS),
        viewport="viewport" in low,
        scripts=count("<script"),
        listeners=count("addeventlistener"),
        modern_decl=count("const ") + count("let "),
        var_decl=count("var "),
        functions=count("function") + count("=>"),
        inline_handlers=count("onclick="),
        unsafe=sum(count(mark) for mark in UNSAFE_MARKS),
        safe=sum(count(mark) for mark in SAFE_MARKS),
        perf=sum(count(mark) for mark in PERF_MARKS),
        visual=sum(count(mark) for mark in VISUAL_MARKS),
        headings=sum(count(mark) for mark in HEADING_MARKS),
        list_items=count("<li") + count("\n- "),
        has_html="<div" in low or "<body" in low or "<html" in low,
        open_close_balance=balance,
        py_defs=len(names),
        py_docstrings=count('"""'),
        py_tests=count("def test_"),
        py_asserts=count("assert "),
        py_types=sum(count(mark) for mark in PY_TYPE_MARKS),
        py_raises=count("raise "),
        py_excepts=count("except "),
        py_bare_excepts=count("except:"),
        py_unsafe=sum(count(mark) for mark in PY_UNSAFE_MARKS),
        py_named=sum(len(n) >= 5 and "_" in n.strip("_") for n in names) / len(names) if names else 0.0,
    )


def _sat(x: float, half: float) -> float:
    """Saturating 0..1 curve: 0 at 0, 0.5 at ``half``, approaching 1."""
    return x / (x + half) if x > 0 else 0.0


def _facets(f: _Features) -> dict[str, tuple[float, str]]:
    """Facet name -> (0..1 quality, rationale)."""
    if f.chars == 0:
        return {name: (0.0, "文档为空") for name in _FACET_NAMES}
    cjk_share = f.cjk / f.chars
    prose = 0.4 * min(1.0, cjk_share / 0.3) + 0.3 * _sat(f.punct, 15) + 0.3 * _sat(f.cjk, 600)
    semantic = 0.8 * _sat(f.semantic, 4) + 0.2 * (f.semantic / (f.semantic + f.divs) if f.semantic else 0.0)
    a11y = _sat(f.a11y, 4)
    responsive = 0.5 * _sat(f.media, 2) + 0.3 * _sat(f.layout, 3) + 0.2 * f.viewport
    decls = f.modern_decl + f.var_decl
    if f.scripts or f.functions:
        script = (0.3 * _sat(f.listeners, 2) + 0.25 * (f.modern_decl / decls if decls else 0.3)
                  + 0.2 * _sat(f.comments, 4) + 0.25 * _sat(f.functions, 3)) - 0.05 * min(f.inline_handlers, 3)
    else:
        script = 0.1
    security = 0.6 + 0.3 * _sat(f.safe, 2) - 0.2 * min(f.unsafe, 3) - 0.03 * min(f.inline_handlers, 3)
    performance = _sat(f.perf, 3)
    layout_share = f.indented / f.lines
    code_org = 0.5 * min(1.0, layout_share / 0.4) + 0.3 * _sat(f.comments, 4) + 0.2 * _sat(f.headings, 3)
    visual = _sat(f.visual, 6)
    completeness = 0.5 * _sat(f.headings + f.semantic + f.list_items + f.functions, 12) + 0.5 * _sat(f.chars, 3000)
    correctness = (0.4 * f.open_close_balance * f.has_html + 0.3 * code_org + 0.3 * (1.0 - 0.3 * min(f.unsafe, 3)))
    appropriateness = (semantic + responsive + max(script, 0.0) + security) / 4
    utility = (completeness + prose + max(script, 0.0)) / 3
    defs = max(f.py_defs, 1)
    documented = max(f.py_defs - f.py_tests, 1)  # test functions need no docstring
    py_docs = 0.85 * min(1.0, f.py_docstrings / 2 / documented) + 0.15 * _sat(f.comments, 3)
    py_tests = 0.6 * _sat(f.py_tests, 0.6) + 0.4 * _sat(f.py_asserts, 0.8)
    py_types = min(1.0, f.py_types / (2 * defs))
    py_errors = (0.5 * _sat(f.py_raises, 2) + 0.5 * (1 - f.py_bare_excepts / (f.py_excepts + f.py_bare_excepts))
                 if f.py_excepts + f.py_bare_excepts else 0.3 * _sat(f.py_raises, 2))
    py_unsafe = 0.95 - 0.3 * min(f.py_unsafe, 3)
    return {
        "py_docs": (py_docs, f"docstring 标记 {f.py_docstrings} 个，函数 {f.py_defs} 个"),
        "py_tests": (py_tests, f"测试函数 {f.py_tests} 个，assert {f.py_asserts} 处"),
        "py_types": (py_types, f"类型标注 {f.py_types} 处，函数 {f.py_defs} 个"),
        "py_errors": (py_errors, f"raise {f.py_raises} 处，具体 except {f.py_excepts} 处，裸 except {f.py_bare_excepts} 处"),
        "py_naming": (f.py_named, f"描述性函数名占比 {f.py_named:.0%}"),
        "py_unsafe": (py_unsafe, f"危险调用（eval/exec/os.system 等）{f.py_unsafe} 处"),
        "prose": (prose, f"中文占比 {cjk_share:.0%}，句读符号 {f.punct} 个，中文字数 {f.cjk}"),
        "semantic": (semantic, f"语义标签 {f.semantic} 个，div {f.divs} 个"),
        "a11y": (a11y, f"无障碍属性（aria/alt/role/label）{f.a11y} 处"),
        "responsive": (responsive, f"@media 查询 {f.media} 处，flex/grid 布局 {f.layout} 处"),
        "script": (script, f"事件监听 {f.listeners} 处，const/let {f.modern_decl} 处，var {f.var_decl} 处"),
        "security": (security, f"危险调用（eval/innerHTML/document.write）{f.unsafe} 处，安全写法 {f.safe} 处"),
        "performance": (performance, f"性能优化提示（lazy/defer/debounce 等）{f.perf} 处"),
        "code_org": (code_org, f"缩进行占比 {layout_share:.0%}，注释 {f.comments} 处"),
        "visual": (visual, f"视觉样式（过渡/阴影/圆角/悬停等）{f.visual} 处"),
        "completeness": (completeness, f"标题 {f.headings} 个，功能/函数 {f.functions} 个，长度 {f.chars} 字符"),
        "correctness": (correctness, f"div 开闭匹配度 {f.open_close_balance:.0%}，危险调用 {f.unsafe} 处"),
        "appropriateness": (appropriateness, "综合语义结构、响应式、脚本与安全性评估技术选型"),
        "utility": (utility, "综合完整度、说明质量与交互性评估实用价值"),
    }


_FACET_NAMES = ("prose", "semantic", "a11y", "responsive", "script", "security", "performance", "code_org",
                "visual", "completeness", "correctness", "appropriateness", "utility",
                "py_docs", "py_tests", "py_types", "py_errors", "py_naming", "py_unsafe")

# First matching keyword group wins; order matters ("Responsive Design" is responsive, not visual;
# "Description" contains "script" but is prose).
_KEYWORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    # Python code facets first: none of the web-design rubric's names contain these phrases.
    (("docstring",), "py_docs"),
    (("unit test", "test coverage"), "py_tests"),
    (("type annotation", "type hint"), "py_types"),
    (("exception",), "py_errors"),
    (("identifier", "naming"), "py_naming"),
    (("dangerous call",), "py_unsafe"),
    (("accessib", "a11y"), "a11y"),
    (("responsive", "mobile"), "responsive"),
    (("semantic", "html structure", "markup"), "semantic"),
    (("security", "safety"), "security"),
    (("performance", "efficien"), "performance"),
    (("chinese", "description", "language", "prose", "writing", "explanation"), "prose"),
    (("javascript", "interactiv", "script"), "script"),
    (("readab", "organi", "maintainab", "code quality"), "code_org"),
    (("visual", "design", "polish", "aesthetic", "ui"), "visual"),
    (("utility", "practical", "useful", "value"), "utility"),
    (("correct", "accura", "valid"), "correctness"),
    (("complete", "coverage"), "completeness"),
    (("appropriate", "technical", "technolog"), "appropriateness"),
)


def facet_for(dimension: str) -> str | None:
    """The facet a dimension name maps to, or None for an unknown name (scored by hash)."""
    low = dimension.lower()
    words = set(re.findall(r"[a-z0-9]+", low))
    for keys, facet in _KEYWORDS:
        for key in keys:
            if (key in words) if len(key) <= 2 else (key in low):
                return facet
    return None


def _unit_hash(digest: bytes, salt: str) -> float:
    """Deterministic 0..1 value from the document digest and a salt."""
    h = hashlib.blake2b(digest + salt.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def _round_half(x: float) -> float:
    return min(SCORE_MAX, max(SCORE_MIN, round(x * 2) / 2))


def _domain_tag(low: str, f: _Features) -> str:
    if f.chars == 0:
        return "empty"
    for keys, tag in DOMAIN_TAGS:
        if any(k in low for k in keys):
            return tag
    if not f.has_html:
        return "python-code" if f.py_defs else "non-html-text"
    return "interactive-web-page" if f.listeners else "html-web-design"


def recommendation_for(overall: int) -> str:
    """keep / downsample / drop from the overall score."""
    if overall >= KEEP_AT:
        return "keep"
    return "downsample" if overall >= DOWNSAMPLE_AT else "drop"


def _scaled(f: _Features, full_chars: int) -> _Features:
    """Scale the counts of a sampled document up to its full length (ratios are unchanged)."""
    if full_chars == f.chars:
        return f
    k = full_chars / f.chars
    counts = {name: round(getattr(f, name) * k) for name in _COUNT_FIELDS}
    return replace(f, chars=full_chars, **counts)


_COUNT_FIELDS = ("cjk", "punct", "lines", "indented", "comments", "semantic", "divs", "a11y", "media", "layout",
                 "scripts", "listeners", "modern_decl", "var_decl", "functions", "inline_handlers", "unsafe",
                 "safe", "perf", "visual", "headings", "list_items", "py_defs", "py_docstrings", "py_tests",
                 "py_asserts", "py_types", "py_raises", "py_excepts", "py_bare_excepts", "py_unsafe")


def judge_document(text: str, source: str, dimensions: list[tuple[str, str]]) -> Judgement:
    """Score ``text`` on ``dimensions`` (``[(slot, name), ...]``) from its content.

    >>> dims = [("A1", "Chinese Description Quality"), ("A2", "Semantic HTML Structure")]
    >>> j = judge_document("<header>页面头部。</header>", "html_cpt", dims)
    >>> sorted(j.scores) == ["A1", "A2"] and j == judge_document("<header>页面头部。</header>", "html_cpt", dims)
    True
    """
    sample = _sample(text)
    low = sample.lower()
    f = _scaled(_features(sample, low), len(text))
    facets = _facets(f)
    digest = hashlib.blake2b(f"{source}\x00{text}".encode(), digest_size=16).digest()
    scores: dict[str, float] = {}
    rationales: dict[str, str] = {}
    for slot, name in dimensions:
        facet = facet_for(name)
        jitter = (_unit_hash(digest, slot) - 0.5) * 2 * JITTER
        if facet is None:
            quality = _unit_hash(digest, "dim:" + name) * 0.6 + 0.2 if f.chars else 0.0
            reason = "（模拟器）未知维度，按内容哈希给分"
        else:
            quality, reason = facets[facet]
        quality = min(1.0, max(0.0, quality))
        scores[slot] = _round_half(0.5 + 9.0 * quality + (jitter if f.chars else 0.0))
        rationales[slot] = reason
    mean = sum(scores.values()) / len(scores) if scores else 0.0
    length_adj = (_sat(f.chars, 2000) - 0.5) * 6 if f.chars else -10.0
    overall = round(10 * mean + length_adj + (_unit_hash(digest, "overall") - 0.5) * 4)
    overall = min(100, max(0, overall))
    tag = _domain_tag(low, f)
    brief = (f"模拟器评分：{source or '未知来源'} 的 {tag} 文档，约 {f.chars} 字符，"
             f"语义标签 {f.semantic} 个，脚本事件 {f.listeners} 处，综合 {overall} 分。")
    return Judgement(scores=scores, rationales=rationales, overall=overall,
                     training_recommendation=recommendation_for(overall), domain_tag=tag, brief=brief)


def _fmt(score: float) -> str:
    return f"{score:g}"


def render_completion(j: Judgement, dimensions: list[tuple[str, str]], slots: list[str] | None = None) -> str:
    """The scorer's answer text: one ``[Ai] name: s/10 — why`` line per slot, then the four summary lines.

    With ``slots`` only those slot lines are rendered (the answer to a repair follow-up), without summary.
    """
    wanted = set(slots) if slots is not None else None
    lines = [
        f"[{slot}] {name}: {_fmt(j.scores.get(slot, 5.0))}/10 — {j.rationales.get(slot, '（模拟器）')}"
        for slot, name in dimensions
        if wanted is None or slot in wanted
    ]
    if slots is None:
        lines += [
            f"overall: {j.overall}",
            f"training_recommendation: {j.training_recommendation}",
            f"domain_tag: {j.domain_tag}",
            f"brief: {j.brief}",
        ]
    return "\n".join(lines)


def parse_template_dimensions(user_content: str) -> list[tuple[str, str]]:
    """``[(slot, name), ...]`` from the ``[A1] name: <score>/10 — ...`` template lines of a user message.

    Only the part before the document marker is read, so template-like lines inside a document are
    ignored; a slot listed twice keeps its first name.

    >>> parse_template_dimensions("[A1] Feature Completeness: <score>/10 — <justification>")
    [('A1', 'Feature Completeness')]
    """
    cut = user_content.find(DOC_BEGIN)
    head = user_content if cut < 0 else user_content[:cut]
    seen: dict[str, str] = {}
    for slot, name in TEMPLATE_LINE.findall(head):
        seen.setdefault(slot, name.strip())
    return list(seen.items())

