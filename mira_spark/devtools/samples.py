"""Deterministic sample corpus: Chinese HTML web-design documents of varying quality, plus teacher labels.

Takes a seed; gives

* :func:`generate_documents` — rows ``{doc_id, source, text}``: ~156 ``html_cpt`` and ~104
  ``html_cpt_web`` documents (plus 3 ``legacy_forum`` documents, a source no scorer covers) built from a
  latent per-document quality and independent per-feature switches, so quality varies along several
  dimensions at once (Chinese prose, semantic HTML, accessibility, responsive CSS, script style, unsafe
  APIs, performance hints, spam, SEO stuffing). Among them are documents over the context budget,
  empty ones and garbled ones, so every guard of the pipeline has something to catch;
* :func:`generate_validation` — the held-out teacher labels the reliability stage compares the
  student against: long rows ``{doc_id, source, slot, teacher_score}``; A1..A13 agree with the
  (simulated) student up to small noise, A14/A15 are pure noise so the reliability mask drops them;
* :func:`generate_code_documents` — with ``code=True`` / ``make-sample --with-code``, 32 ``py_snippets``
  Python modules for the demo's second scorer group (``anchors/code/``, 6 slots; slot A5's teacher
  labels are pure noise);
* :func:`write_sample` — both as Delta tables (``deltalake``, no Spark) or parquet directories.

Everything is a pure function of the seed (``random.Random``, never global random or the clock): the
same seed gives byte-identical output. Generation of the whole corpus takes well under a second.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from mira_spark.prompting.prompts import text_problem
from mira_spark.prompting.tokens import OTHER_TOKENS_PER_CHAR, estimate_tokens

SCORED_SOURCES: dict[str, int] = {"html_cpt": 156, "html_cpt_web": 104}
UNSCORED_SOURCE = "legacy_forum"  # no scorer group lists it: routing must flag it
UNSCORED_DOCS = 3
MIN_CHARS = 500
MAX_CHARS = 30_000
OVER_BUDGET_TOKENS = 64_000  # an over-budget document estimates above this (max-model-len 65,536)
MAX_TOKENS_PER_CHAR = OTHER_TOKENS_PER_CHAR  # the highest per-character weight of estimate_tokens
OVERSIZE_PER_SOURCE = 3
OVERSIZE_MIN_CHARS = 80_000
OVERSIZE_MAX_CHARS = 160_000
EMPTY_TEXTS: tuple[str | None, ...] = (None, "", "   ", "\n\t\n", "\u3000\u3000 \n")
GARBLED_DOCS = 3
NOISE_SLOTS = ("A14", "A15")  # teacher labels independent of the document: unreliable by design
TEACHER_NOISE_SD = 0.6

# Quality threshold per feature: a feature is present when rng < sigmoid(SLOPE * (quality - threshold)).
FEATURE_SLOPE = 7.0


@dataclass(frozen=True)
class Topic:
    name: str  # Chinese topic name, used in titles and prose
    slug: str  # ids and class names
    container: str  # semantic element holding the component
    item: str  # input | link | card | row | li | slide | para | toggle
    items: tuple[str, ...]
    action: str  # Chinese label of the main button
    reqs: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic("登录表单", "login", "form", "input", ("手机号", "密码", "验证码"), "登录",
          ("支持手机号和密码登录", "输入错误时给出明确提示", "提交时不刷新页面", "在手机上也要好用")),
    Topic("注册页", "register", "form", "input", ("用户名", "邮箱", "密码", "确认密码"), "注册",
          ("校验两次密码一致", "邮箱格式校验", "提交按钮在校验通过前禁用", "错误提示能被读屏软件读出")),
    Topic("导航栏", "navbar", "nav", "link", ("首页", "产品", "解决方案", "博客", "关于我们"), "菜单",
          ("桌面端横向排列", "手机端折叠为菜单按钮", "当前页面高亮", "键盘可以操作")),
    Topic("商品卡片", "product-card", "section", "card", ("陶瓷马克杯", "帆布包", "机械键盘", "台灯"), "加入购物车",
          ("图片、名称、价格、按钮齐全", "列数随屏幕宽度变化", "图片延迟加载", "按钮状态清晰")),
    Topic("响应式布局", "layout", "main", "para", ("头部", "侧边栏", "正文", "页脚"), "展开侧栏",
          ("三栏布局在平板变两栏、手机变单栏", "不使用固定像素宽度", "内容优先", "打印友好")),
    Topic("轮播图", "carousel", "section", "slide", ("春季新品", "限时折扣", "会员专享"), "下一张",
          ("自动播放且可暂停", "左右切换与指示点", "图片懒加载", "尊重减少动态效果的系统设置")),
    Topic("数据表格", "data-table", "section", "row", ("张伟", "李娜", "王强", "赵敏"), "排序",
          ("点击表头排序", "窄屏可横向滚动", "表头对读屏友好", "数据多时分页")),
    Topic("暗色模式", "dark-mode", "header", "toggle", ("浅色", "深色", "跟随系统"), "切换主题",
          ("跟随系统主题", "手动切换并记住选择", "切换无闪烁", "颜色对比度达标")),
    Topic("待办事项应用", "todo", "main", "li", ("买菜", "写周报", "健身", "读书"), "添加",
          ("添加、完成、删除任务", "刷新后数据不丢失", "防止 XSS", "空输入提示")),
    Topic("仪表盘", "dashboard", "main", "card", ("今日访问", "订单数", "转化率", "客单价"), "刷新数据",
          ("关键指标一屏可见", "图表容器预留高度", "多断点布局", "数据定时刷新")),
    Topic("404 页面", "not-found", "main", "para", ("返回首页", "站内搜索", "联系我们"), "搜索",
          ("告诉用户页面不存在", "提供返回路径", "服务器返回真实 404 状态码", "风格与全站一致")),
    Topic("博客文章页", "blog-post", "article", "para", ("引言", "正文", "小结", "评论"), "发表评论",
          ("标题层级清晰", "阅读宽度适中", "图片带说明", "评论区防注入")),
    Topic("模态对话框", "modal", "section", "toggle", ("确认", "取消"), "打开对话框",
          ("打开时焦点移入对话框", "Esc 可关闭", "背景不可滚动", "关闭后焦点回到触发按钮")),
    Topic("价格表", "pricing", "section", "card", ("基础版", "专业版", "企业版"), "立即购买",
          ("三档套餐对比", "推荐套餐突出显示", "手机上纵向排列", "价格用语义标签")),
)

EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("表单校验", "validate"), ("加载状态", "loading"), ("键盘操作支持", "keyboard"), ("暗色主题适配", "theme"),
    ("打印样式", "print"), ("动画过渡", "motion"), ("错误处理", "errors"), ("本地存储", "storage"),
    ("浏览器兼容性", "compat"), ("性能优化", "perf"), ("单元测试", "tests"), ("国际化文案", "i18n"),
)

_MT_FRAGMENTS = (
    "这个是代码的为了", "它使用的按钮点击将会做事情", "首先您需要的是打开编辑器并且放置的代码到它",
    "是非常重要对于网站", "因为用户的需要是的", "以上的代码是工作的很好在所有的浏览器的", "请享受它的制作",
    "我们的将会使得", "这样的样式是美丽的和响应的", "如果你的想要改变颜色，改变它", "代码下面是完整的",
    "点击的效果将出现当", "它是容易的并且快速", "网页的设计是关于用户的经验",
)
_SEO_WORDS = (
    "网页设计", "网站建设", "网站制作", "网页模板", "北京网站建设", "上海网站建设", "深圳网站建设", "网页设计公司",
    "便宜网站建设", "网站优化", "SEO优化", "前端外包", "html模板下载", "免费网站模板",
)
_GOOD_PROSE = (
    "这样做的好处是结构和样式分离，后续修改主题时只需要改 CSS 变量。",
    "移动端优先：先写小屏样式，再用 min-width 媒体查询逐步增强。",
    "交互状态（悬停、聚焦、禁用）都要有视觉反馈，否则用户不知道操作是否生效。",
    "所有可点击的元素都应该是 button 或 a，这样天然支持键盘和读屏软件。",
    "脚本只负责行为，文案和结构放在 HTML 里，便于搜索引擎和辅助技术理解页面。",
    "用 textContent 写入用户输入，可以从根本上避免 XSS。",
    "图片声明宽高可以避免加载时的布局抖动（CLS），配合 loading=\"lazy\" 节省首屏流量。",
    "颜色对比度至少达到 4.5:1，浅灰色文字在阳光下几乎看不清。",
    "命名遵循 BEM 约定，块、元素、修饰符一目了然，多人协作时不容易冲突。",
    "把魔法数字提成 CSS 自定义属性，间距和圆角在全站保持一致。",
)


@dataclass(frozen=True)
class Features:
    """Independent switches of one document (drawn from its latent quality)."""

    explain: str  # good | none | broken
    semantic: bool
    a11y: bool
    responsive: bool
    modern_js: bool
    unsafe_js: bool
    comments: bool
    perf: bool
    table_layout: bool
    spam: bool
    seo: bool
    boilerplate: bool


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _on(rng: random.Random, quality: float, threshold: float) -> bool:
    """Good feature: likelier the higher the quality."""
    return rng.random() < _sigmoid(FEATURE_SLOPE * (quality - threshold))


def _bad(rng: random.Random, quality: float, threshold: float) -> bool:
    """Bad feature: likelier the lower the quality."""
    return rng.random() < _sigmoid(FEATURE_SLOPE * (threshold - quality))


def draw_features(rng: random.Random, quality: float, source: str) -> Features:
    """Per-feature switches; each is drawn on its own so documents differ along several dimensions."""
    r = rng.random()
    explain = "good" if r < _sigmoid(FEATURE_SLOPE * (quality - 0.35)) else ("none" if r < 0.85 else "broken")
    web = source == "html_cpt_web"
    return Features(
        explain=explain,
        semantic=_on(rng, quality, 0.45),
        a11y=_on(rng, quality, 0.55),
        responsive=_on(rng, quality, 0.45),
        modern_js=_on(rng, quality, 0.4),
        unsafe_js=_bad(rng, quality, 0.35),
        comments=_on(rng, quality, 0.5),
        perf=_on(rng, quality, 0.6),
        table_layout=_bad(rng, quality, 0.15),
        spam=_bad(rng, quality, 0.12 if not web else 0.2),
        seo=_bad(rng, quality, 0.08 if not web else 0.22),
        boilerplate=web and rng.random() < 0.7,
    )


EXCELLENT = Features("good", True, True, True, True, False, True, True, False, False, False, False)
TERRIBLE = Features("broken", False, False, False, False, True, False, False, True, True, True, False)


# ---------------------------------------------------------------------------------------------- markup
def _el(f: Features, tag: str) -> str:
    return tag if f.semantic else "div"


def _aria(f: Features, label: str) -> str:
    return f' aria-label="{label}"' if f.a11y else ""


def _img(f: Features, src: str, alt: str) -> str:
    attrs = f' alt="{alt}"' if f.a11y else ""
    if f.perf:
        attrs += ' loading="lazy" width="320" height="240"'
    return f'<img src="{src}"{attrs}>'


def _button(f: Features, label: str, ident: str) -> str:
    if f.modern_js:
        return f'<button type="button" id="{ident}"{_aria(f, label)}>{label}</button>'
    return f'<div class="btn" onclick="{ident.replace("-", "_")}()">{label}</div>'


def _item(f: Features, t: Topic, i: int, label: str) -> str:
    ident = f"{t.slug}-{i}"
    if t.item == "input":
        kind = "password" if "密码" in label else ("email" if "邮箱" in label else "text")
        if f.a11y:
            return f'  <label for="{ident}">{label}</label>\n  <input id="{ident}" type="{kind}" required>'
        return f'  {label}<input name="{ident}" placeholder="{label}">'
    if t.item == "link":
        current = ' aria-current="page"' if f.a11y and i == 0 else ""
        if f.semantic:
            return f'  <li><a href="/{ident}"{current}>{label}</a></li>'
        return f'  <div class="nav-item" onclick="location.href=\'/{ident}\'">{label}</div>'
    if t.item == "card":
        art = _el(f, "article")
        return (f'  <{art} class="card">\n    {_img(f, f"/img/{ident}.jpg", label)}\n'
                f'    <h3>{label}</h3>\n    <p class="price">¥{39 + 20 * i}</p>\n'
                f"    {_button(f, t.action, ident + '-btn')}\n  </{art}>")
    if t.item == "row":
        return f"  <tr><td>{label}</td><td>研发部</td><td>2021-0{i + 1}-15</td></tr>"
    if t.item == "li":
        return f'  <li class="task">{label}</li>'
    if t.item == "slide":
        fig = _el(f, "figure")
        return f'  <{fig} class="slide">{_img(f, f"/banner/{i}.jpg", label)}</{fig}>'
    if t.item == "toggle":
        return f"  {_button(f, label, ident)}"
    h = _el(f, "h2") if f.semantic else "b"
    return f"  <{h}>{label}</{h}>\n  <p>{t.name}中“{label}”部分的内容。</p>"


def render_html(f: Features, t: Topic) -> str:
    """The component's markup, wrapped in a page skeleton that follows the switches."""
    items = "\n".join(_item(f, t, i, label) for i, label in enumerate(t.items))
    if t.item == "row":
        head = '<tr><th scope="col">姓名</th><th scope="col">部门</th><th scope="col">入职日期</th></tr>' \
            if f.a11y else "<tr><td><b>姓名</b></td><td><b>部门</b></td><td><b>入职日期</b></td></tr>"
        items = f"<table class=\"{t.slug}\">\n<thead>{head}</thead>\n<tbody>\n{items}\n</tbody>\n</table>"
    elif t.item in ("link", "li"):
        items = f'<ul id="{t.slug}-list">\n{items}\n</ul>' if f.semantic or t.item == "li" else items
    container = _el(f, t.container)
    comp = (f'<{container} class="{t.slug}"{_aria(f, t.name)}>\n{items}\n'
            f"{_button(f, t.action, t.slug + '-action')}\n</{container}>")
    if f.comments:
        comp = f"<!-- {t.name}：结构只描述内容，样式和行为分别放在 CSS 与 JS 中 -->\n{comp}"
    if f.table_layout:
        return ('<table width="960" border="0" cellpadding="0" cellspacing="0" align="center">\n'
                '<tr><td bgcolor="#eeeeee"><font size="2">网站标题</font></td></tr>\n'
                f"<tr><td>\n{comp}\n</td></tr>\n<tr><td align=\"center\"><font size=\"1\">版权所有</font></td></tr>\n"
                "</table>")
    head = ('<meta name="viewport" content="width=device-width, initial-scale=1">\n' if f.responsive else "")
    script = f'<script src="{t.slug}.js"{" defer" if f.perf else ""}></script>'
    if f.semantic:
        return (f'<!DOCTYPE html>\n<html lang="zh-CN">\n<head>\n<meta charset="utf-8">\n{head}'
                f"<title>{t.name}</title>\n</head>\n<body>\n<header><h1>{t.name}</h1></header>\n<main>\n{comp}\n"
                f"</main>\n<footer><p>© 2024 前端示例</p></footer>\n{script}\n</body>\n</html>")
    return (f'<html>\n<head>{head}<title>{t.name}</title></head>\n<body>\n<div id="header"><div class="title">'
            f'{t.name}</div></div>\n<div id="content">\n{comp}\n</div>\n<div id="footer">© 2024</div>\n'
            f"{script}\n</body>\n</html>")


def render_css(f: Features, t: Topic, rng: random.Random) -> str:
    gap = rng.choice((8, 12, 16, 24))
    radius = rng.choice((4, 6, 8, 12))
    lines = []
    if f.comments:
        lines.append(f"/* {t.name}：颜色和间距集中在变量里，方便换肤 */")
    lines.append(f":root {{ --gap: {gap}px; --radius: {radius}px; --brand: #{rng.randrange(0x1000000):06x}; }}")
    if f.responsive:
        layout = ("display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: var(--gap);"
                  if t.item in ("card", "para") else "display: flex; flex-wrap: wrap; gap: var(--gap);")
        lines += [f".{t.slug} {{ {layout} max-width: 72rem; margin: 0 auto; }}",
                  f".{t.slug} button {{ border-radius: var(--radius); transition: background .2s; }}",
                  f".{t.slug} button:focus-visible {{ outline: 2px solid var(--brand); }}",
                  f"@media (max-width: 768px) {{\n  .{t.slug} {{ grid-template-columns: 1fr; flex-direction: column; }}\n}}",
                  "@media (prefers-reduced-motion: reduce) {\n  * { transition: none !important; }\n}"]
    else:
        lines += [f".{t.slug} {{ width: 960px; float: left; }}",
                  f".{t.slug} .btn {{ width: 120px; height: 30px; background: red; color: #fff; }}",
                  "#footer { clear: both; }"]
    return "\n".join(lines)


def render_js(f: Features, t: Topic, rng: random.Random) -> str:
    var = rng.choice(("value", "text", "input", "entry", "data"))
    slug = t.slug.replace("-", "_")
    if f.modern_js:
        lines = []
        if f.comments:
            lines.append(f"// {t.name}：只在这里绑定事件，HTML 中不写内联处理函数")
        lines += [f"const root = document.querySelector('.{t.slug}');",
                  f"const action = document.getElementById('{t.slug}-action');",
                  "action.addEventListener('click', (event) => {",
                  f"  const {var} = root.querySelector('input')?.value.trim() ?? '';",
                  "  const item = document.createElement('li');"]
        lines.append(f"  item.innerHTML = '<b>' + {var} + '</b>';" if f.unsafe_js
                     else f"  item.textContent = {var};")
        lines += ["  root.append(item);", "});"]
        if f.a11y:
            lines += ["root.addEventListener('keydown', (event) => {",
                      "  if (event.key === 'Escape') action.focus();", "});"]
        if f.perf:
            lines += ["let timer;", "window.addEventListener('resize', () => {",
                      "  clearTimeout(timer);", "  timer = setTimeout(() => root.classList.toggle('narrow', innerWidth < 768), 150);",
                      "});"]
    else:
        lines = [f"var {var} = '';", f"function {slug}_action() {{",
                 f"  {var} = document.getElementsByTagName('input')[0].value;"]
        if f.unsafe_js:
            lines += [f"  document.getElementById('content').innerHTML += '<p>' + {var} + '</p>';",
                      f"  eval('window.last = \"' + {var} + '\"');"]
        else:
            lines.append(f"  alert({var});")
        lines.append("}")
        if f.unsafe_js:
            lines.append("document.write('<p>今天是' + new Date().getFullYear() + '年</p>');")
        lines.append(f"setInterval(\"{slug}_action()\", 5000);" if rng.random() < 0.3 else "")
    return "\n".join(line for line in lines if line)


# ----------------------------------------------------------------------------------------------- prose
def _broken(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_MT_FRAGMENTS) + rng.choice(("。", "，", "！", "。")) for _ in range(n))


def _seo_line(rng: random.Random) -> str:
    return " ".join(rng.choice(_SEO_WORDS) for _ in range(rng.randint(12, 24)))


def render_intro(f: Features, t: Topic, rng: random.Random) -> str:
    if f.explain == "none":
        return rng.choice(("代码如下：", f"{t.name}源码，复制即可使用。", "", "效果图略，直接上代码"))
    if f.explain == "broken":
        return _broken(rng, rng.randint(3, 6))
    reqs = "\n".join(f"- {r}" for r in t.reqs)
    decisions = []
    if f.semantic:
        decisions.append(f"结构上用 <header>、<main>、<{t.container}> 等语义标签描述内容，而不是一层层 div。")
    if f.a11y:
        decisions.append("每个控件都有可见的 label 或 aria-label，读屏软件能读出它的用途。")
    if f.responsive:
        decisions.append("布局用 Flex/Grid 加一个 768px 断点，小屏幕自动变成单列。")
    if f.modern_js:
        decisions.append("脚本用 const/let 和 addEventListener 绑定事件，HTML 中不出现内联 onclick。")
    if f.perf:
        decisions.append("图片 loading=\"lazy\"、脚本 defer，首屏不被阻塞。")
    decisions += rng.sample(_GOOD_PROSE, 2)
    return (f"## 需求\n我们要实现一个{t.name}，具体要求：\n{reqs}\n\n## 设计思路\n" + "\n".join(decisions))


def render_closing(f: Features, t: Topic, rng: random.Random) -> str:
    if f.explain == "good":
        return (f"## 小结\n这个{t.name}的要点是：结构语义化、样式可维护、交互可访问。"
                f"{rng.choice(_GOOD_PROSE)}后续可以继续补充{rng.choice(EXTENSIONS)[0]}。")
    if f.explain == "broken":
        return _broken(rng, 2)
    return ""


def render_extension(f: Features, t: Topic, rng: random.Random, n: int) -> str:
    """One optional extension section (explanation + code) used to grow a document to its length."""
    name, key = rng.choice(EXTENSIONS)
    title = f"### 扩展 {n}：{name}" if f.explain != "broken" else f"第{n}步{name}的做"
    if f.explain == "good":
        prose = (f"{t.name}上线后常见的需求是{name}。" + "".join(rng.sample(_GOOD_PROSE, 3)) +
                 f"下面的代码只改动了 {key} 相关的部分，其余保持不变。")
    elif f.explain == "broken":
        prose = _broken(rng, rng.randint(2, 5))
    else:
        prose = ""
    part = rng.random()
    if part < 0.34:
        code = "```css\n" + render_css(f, t, rng) + "\n```"
    elif part < 0.67:
        code = "```js\n" + render_js(f, t, rng) + "\n```"
    else:
        code = "```html\n" + render_html(f, t) + "\n```"
    return "\n".join(x for x in (title, prose, code) if x)


def _boilerplate_head(t: Topic, rng: random.Random) -> str:
    return f"首页 > 前端教程 > HTML/CSS > {t.name}\n发布时间：2023-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}  阅读 {rng.randint(100, 99999)}"


def _boilerplate_tail(rng: random.Random) -> str:
    related = "、".join(rng.sample([tp.name for tp in TOPICS], 4))
    return (f"本文来源于网络，如有侵权请联系删除。\n上一篇：{rng.choice(TOPICS).name}实例  下一篇：{rng.choice(TOPICS).name}教程\n"
            f"相关推荐：{related}\n© 前端学习网 版权所有 京ICP备{rng.randint(10000000, 99999999)}号")


def render_document(f: Features, t: Topic, rng: random.Random, target: int, max_chars: int = MAX_CHARS) -> str:
    """Title, intro, code blocks, closing, extensions until ``target`` characters; spam/SEO/boilerplate as switched."""
    if f.explain == "good":
        title = f"# {t.name}：{rng.choice(('从需求到实现', '完整实现与设计说明', '最佳实践', '一步步实现'))}"
    elif f.explain == "broken":
        title = f"如何制作{t.name}的{rng.choice(('方法', '代码的', '效果的'))}"
    else:
        title = f"{t.name}{rng.choice(('代码', '源码下载', '特效', '模板'))}"
    essential = [title, render_intro(f, t, rng), "```html\n" + render_html(f, t) + "\n```"]
    optional = ["```css\n" + render_css(f, t, rng) + "\n```", "```js\n" + render_js(f, t, rng) + "\n```",
                render_closing(f, t, rng)]
    parts = [p for p in essential if p]
    if f.boilerplate:
        parts.insert(0, _boilerplate_head(t, rng))
    if f.seo:
        parts.insert(1, _seo_line(rng))
    size = sum(len(p) + 2 for p in parts)
    for p in optional:
        if p and size < target:
            parts.append(p)
            size += len(p) + 2
    n = 1
    while size < max(target, MIN_CHARS):
        if f.spam and n > 1:
            block = parts[-1] if rng.random() < 0.7 else _seo_line(rng) if f.seo else parts[len(parts) // 2]
        else:
            block = render_extension(f, t, rng, n)
        if size + len(block) + 2 > max_chars:
            break
        parts.append(block)
        size += len(block) + 2
        n += 1
    if f.seo:
        parts.append(_seo_line(rng))
    if f.boilerplate:
        parts.append(_boilerplate_tail(rng))
    return "\n\n".join(parts)


def render_oversize(f: Features, t: Topic, rng: random.Random) -> str:
    """A dense compendium (Chinese prose + markup) well over the context budget."""
    f = replace(f, explain="good", spam=False)
    target_tokens = rng.randint(70_000, 110_000)
    parts = [f"# {t.name}完全手册：{len(TOPICS)} 个组件的设计与实现合集", render_intro(f, t, rng)]
    tokens = sum(estimate_tokens(p) for p in parts)
    size = sum(len(p) + 2 for p in parts)
    n = 1
    while (tokens < target_tokens or size < OVERSIZE_MIN_CHARS) and size < OVERSIZE_MAX_CHARS - 4_000:
        topic = rng.choice(TOPICS)
        block = render_extension(f, topic, rng, n) + "\n" + "".join(rng.sample(_GOOD_PROSE, 6))
        parts.append(block)
        tokens += estimate_tokens(block)
        size += len(block) + 2
        n += 1
    return "\n\n".join(parts)


def render_garbled(rng: random.Random, base: str) -> str:
    """Mojibake (UTF-8 read as cp1252), U+FFFD runs and C0 control characters over a real document."""
    mojibake = base.encode("utf-8").decode("cp1252", errors="replace")
    out = []
    for ch in mojibake[: rng.randint(1_500, 6_000)]:
        r = rng.random()
        if r < 0.25:
            out.append("\ufffd")
        elif r < 0.35:
            out.append(chr(rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 27, 31))))
        else:
            out.append(ch)
    return "".join(out)


def render_forum(rng: random.Random, i: int) -> str:
    t = rng.choice(TOPICS)
    return (f"【求助】{t.name}在 IE6 下错位怎么办？\n楼主：网友{rng.randint(1000, 9999)}\n"
            f"如题，我的{t.name}在 IE6 下面全乱了，代码如下：\n"
            f"<div style=\"width:{rng.randint(700, 1000)}px\"><font color=red>{t.name}</font></div>\n"
            f"2 楼：加个 <!--[if IE]> 条件注释试试。\n3 楼：顶，同问。\n4 楼：换 table 布局就好了。\n"
            f"（本帖最后由 管理员 于 2009-0{i + 1}-0{i + 2} 编辑）\n" + "路过，顶一下。\n" * rng.randint(30, 90))


# ------------------------------------------------------------------------------------- code (2nd group)
# The demo's second scorer group (anchors/code/): short Python modules of varying quality, scored on a
# 6-slot rubric by their own pool. Opt-in (``code=True``, ``make-sample --with-code``), so the default
# sample and everything measured on it stay as they were.
CODE_SOURCE = "py_snippets"
CODE_DOCS = 32
CODE_VALIDATION_DOCS = 24  # >= reliability.min_n of conf/local.yaml: the source's own cells decide
CODE_NOISE_SLOTS = ("A5",)  # "Identifier Naming": teacher labels independent of the code


@dataclass(frozen=True)
class CodeFeatures:
    """Independent switches of one Python module (drawn from its latent quality)."""

    docstrings: bool
    tests: bool
    types: bool
    errors: bool  # specific exceptions raised with a message (else bare ``except: pass``)
    naming: bool  # descriptive snake_case names (else one-letter names)
    unsafe: bool  # eval / os.system / shell=True


CODE_EXCELLENT = CodeFeatures(True, True, True, True, True, False)
CODE_TERRIBLE = CodeFeatures(False, False, False, False, False, True)

# (module stem, what it does, noun the functions work on, verbs)
CODE_TOPICS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("csv_tools", "read and summarise CSV exports", "rows", ("load", "count", "filter", "merge")),
    ("rate_limit", "a token-bucket rate limiter for API clients", "tokens", ("refill", "take", "reset", "report")),
    ("config_loader", "load layered JSON configuration files", "settings", ("load", "merge", "validate", "dump")),
    ("text_stats", "word and sentence statistics for plain text", "words", ("split", "count", "rank", "trim")),
    ("retry", "retry flaky calls with capped backoff", "attempts", ("schedule", "record", "reset", "summarise")),
    ("inventory", "track stock levels of a small shop", "items", ("add", "remove", "restock", "list")),
)


def draw_code_features(rng: random.Random, quality: float) -> CodeFeatures:
    return CodeFeatures(
        docstrings=_on(rng, quality, 0.45),
        tests=_on(rng, quality, 0.55),
        types=_on(rng, quality, 0.4),
        errors=_on(rng, quality, 0.5),
        naming=_on(rng, quality, 0.35),
        unsafe=_bad(rng, quality, 0.3),
    )


def _py_function(f: CodeFeatures, noun: str, verb: str, k: int) -> list[str]:
    name = f"{verb}_{noun}" if f.naming else f"{verb[0]}{k}"
    arg = "path" if f.naming else "p"
    out = [f"def {name}({arg}: str, limit: int = 10) -> list[str]:" if f.types else f"def {name}({arg}, limit=10):"]
    if f.docstrings:
        out.append(f'    """{verb.capitalize()} the {noun} stored at ``{arg}``; at most ``limit`` of them."""')
    if f.unsafe:
        read = [f"    data = eval(open({arg}).read())", f"    os.system('touch ' + {arg})"]
    else:
        read = [f"    with open({arg}, encoding='utf-8') as handle:", "        data = json.load(handle)"]
    if f.errors:
        out += ["    try:", *("    " + line for line in read), "    except FileNotFoundError as exc:",
                f"        raise ValueError(f'no {noun} file at {{{arg}}}') from exc",
                "    if limit < 0:", "        raise ValueError('limit must be >= 0')"]
    else:
        out += ["    try:", *("    " + line for line in read), "    except:", "        pass"]
    out += ["    return [str(x) for x in data][:limit]", ""]
    return out


def render_python(f: CodeFeatures, topic: tuple[str, str, str, tuple[str, ...]], rng: random.Random) -> str:
    """A small Python module on ``topic`` whose features follow ``f`` (pure function of its inputs)."""
    stem, purpose, noun, verbs = topic
    lines = [f'"""{stem}: {purpose}."""', ""] if f.docstrings else [f"# {stem}", ""]
    lines += ["import json", "import os" if f.unsafe else "import logging", ""]
    chosen = rng.sample(verbs, rng.randint(2, len(verbs)))
    for k, verb in enumerate(chosen):
        lines += _py_function(f, noun, verb, k)
    if f.tests:
        for verb in chosen[:2]:
            name = f"{verb}_{noun}" if f.naming else f"{verb[0]}{chosen.index(verb)}"
            lines += [f"def test_{name}_respects_limit(tmp_path) -> None:" if f.types
                      else f"def test_{name}_respects_limit(tmp_path):",
                      "    target = tmp_path / 'data.json'", "    target.write_text(json.dumps(list(range(20))))",
                      f"    assert len({name}(str(target), limit=3)) == 3", ""]
    return "\n".join(lines)


def generate_code_documents(seed: int = 7) -> list[dict]:
    """The second group's documents: ``CODE_DOCS`` Python modules, a pure function of ``seed``.

    >>> docs = generate_code_documents()
    >>> len(docs), docs[0]["source"], docs[0]["doc_id"]
    (32, 'py_snippets', 'py_snippets-000000')
    """
    docs: list[dict] = []
    for i in range(CODE_DOCS):
        rng = random.Random(f"{seed}/{CODE_SOURCE}/{i}")
        topic = CODE_TOPICS[rng.randrange(len(CODE_TOPICS))]
        feats = draw_code_features(rng, rng.betavariate(2.0, 2.0))
        if i == 0:
            feats = CODE_EXCELLENT
        elif i == 1:
            feats = CODE_TERRIBLE
        docs.append({"doc_id": f"{CODE_SOURCE}-{i:06d}", "source": CODE_SOURCE, "text": render_python(feats, topic, rng)})
    return docs


def code_dimensions() -> list[tuple[str, str]]:
    """``[(slot, name)]`` of the demo code rubric (``anchors/code/demo_python_dim_anchors.jsonl``)."""
    from mira_spark.prompting.rubric import load_dimensions
    from mira_spark.resources import code_demo_anchors

    dims = load_dimensions(code_demo_anchors(), expected_size=CODE_RUBRIC_SLOTS)
    return [(d.slot, d.dimension) for d in dims]


CODE_RUBRIC_SLOTS = 6


# -------------------------------------------------------------------------------------------- corpus
def _target_length(rng: random.Random) -> int:
    """Log-uniform between MIN_CHARS and MAX_CHARS, slightly tilted towards the ~8.5K median."""
    lo, hi = math.log(MIN_CHARS * 1.2), math.log(MAX_CHARS * 0.85)
    if rng.random() < 0.6:
        return int(math.exp((rng.uniform(math.log(2_000), hi) + rng.uniform(math.log(2_000), hi)) / 2))
    return int(math.exp(rng.uniform(lo, hi)))


def generate_documents(seed: int = 7) -> list[dict]:
    """The sample corpus: ``[{doc_id, source, text}]``, a pure function of ``seed``.

    >>> docs = generate_documents()
    >>> len(docs) >= 260, docs[0]["doc_id"]
    (True, 'html_cpt-000000')
    """
    plan = random.Random(seed)
    specials: dict[tuple[str, int], str] = {}
    empties = list(EMPTY_TEXTS)
    for source, n in SCORED_SOURCES.items():
        picks = plan.sample(range(2, n), OVERSIZE_PER_SOURCE + 3 + 2)
        for i in picks[:OVERSIZE_PER_SOURCE]:
            specials[(source, i)] = "oversize"
        n_empty = 3 if source == "html_cpt" else 2
        for i in picks[OVERSIZE_PER_SOURCE:OVERSIZE_PER_SOURCE + n_empty]:
            specials[(source, i)] = "empty"
        n_garbled = 2 if source == "html_cpt" else 1
        for i in picks[OVERSIZE_PER_SOURCE + n_empty:OVERSIZE_PER_SOURCE + n_empty + n_garbled]:
            specials[(source, i)] = "garbled"

    docs: list[dict] = []
    for source, n in SCORED_SOURCES.items():
        alpha, beta = (2.4, 1.8) if source == "html_cpt" else (1.7, 2.2)
        for i in range(n):
            rng = random.Random(f"{seed}/{source}/{i}")
            topic = TOPICS[rng.randrange(len(TOPICS))]
            quality = rng.betavariate(alpha, beta)
            feats = draw_features(rng, quality, source)
            if i == 0:
                feats = EXCELLENT if source == "html_cpt" else replace(EXCELLENT, boilerplate=True)
            elif i == 1:
                feats = TERRIBLE
            kind = specials.get((source, i))
            if kind == "oversize":
                text: str | None = render_oversize(feats, topic, rng)
            elif kind == "empty":
                text = empties.pop(0)
            elif kind == "garbled":
                text = render_garbled(rng, render_document(feats, topic, rng, 8_000))
            else:
                text = render_document(feats, topic, rng, _target_length(rng))
            docs.append({"doc_id": f"{source}-{i:06d}", "source": source, "text": text})
    for i in range(UNSCORED_DOCS):
        rng = random.Random(f"{seed}/{UNSCORED_SOURCE}/{i}")
        docs.append({"doc_id": f"{UNSCORED_SOURCE}-{i:06d}", "source": UNSCORED_SOURCE, "text": render_forum(rng, i)})
    return docs


def document_kind(text: str | None) -> str:
    """``empty`` / ``garbled`` (the pipeline's own checks) / ``over_budget`` / ``ok``."""
    problem = text_problem(text)
    if problem == "empty_text":
        return "empty"
    if problem is not None:
        return "garbled"
    if len(text) * MAX_TOKENS_PER_CHAR <= OVER_BUDGET_TOKENS:  # type: ignore[arg-type]
        return "ok"  # cannot be over budget; skips the regex passes of estimate_tokens
    return "over_budget" if estimate_tokens(text) > OVER_BUDGET_TOKENS else "ok"  # type: ignore[arg-type]


def _default_dimensions(slots: list[str]) -> list[tuple[str, str]]:
    from mira_spark.prompting.rubric import load_dimensions
    from mira_spark.resources import default_anchors

    names = {d.slot: d.dimension for d in load_dimensions(default_anchors())}
    return [(s, names.get(s, s)) for s in slots]


def generate_validation(
    documents: list[dict],
    slots: list[str],
    seed: int = 11,
    per_source: int = 40,
    dimensions: list[tuple[str, str]] | None = None,
    sources: tuple[str, ...] = tuple(SCORED_SOURCES),
    noise_slots: tuple[str, ...] = NOISE_SLOTS,
) -> list[dict]:
    """Teacher labels ``[{doc_id, source, slot, teacher_score}]`` for ``per_source`` valid docs per scored source.

    The teacher agrees with the simulated student (``mira_spark.devtools.simulator.judge``) up to gaussian noise
    (sd ``TEACHER_NOISE_SD``) on every slot except ``noise_slots``, where it is uniform 0-10 and
    independent of the document. Scores are clipped to 0-10 and rounded to 0.5. ``dimensions``
    (``[(slot, name)]``) defaults to the group B anchors file.
    """
    from mira_spark.devtools.simulator.judge import (
        judge_document,  # written alongside; imported only when labelling
    )

    dims = dimensions if dimensions is not None else _default_dimensions(slots)
    rng = random.Random(seed)
    rows: list[dict] = []
    for source in sources:
        valid = sorted(d["doc_id"] for d in documents
                       if d["source"] == source and document_kind(d["text"]) in ("ok", "over_budget"))
        chosen = set(rng.sample(valid, min(per_source, len(valid))))
        for doc in documents:
            if doc["doc_id"] not in chosen:
                continue
            student = judge_document(doc["text"], source, dims).scores
            for slot in slots:
                if slot in noise_slots:
                    score = rng.uniform(0.0, 10.0)
                else:
                    score = float(student[slot]) + rng.gauss(0.0, TEACHER_NOISE_SD)
                score = round(min(10.0, max(0.0, score)) * 2) / 2
                rows.append({"doc_id": doc["doc_id"], "source": source, "slot": slot, "teacher_score": score})
    return rows


# -------------------------------------------------------------------------------------------- writing
def _schemas():
    import pyarrow as pa

    documents = pa.schema([pa.field("doc_id", pa.string(), nullable=False), pa.field("source", pa.string()),
                           pa.field("text", pa.string())])
    validation = pa.schema([pa.field("doc_id", pa.string(), nullable=False), pa.field("source", pa.string()),
                            pa.field("slot", pa.string(), nullable=False), pa.field("teacher_score", pa.float64())])
    return documents, validation


def _write_table(table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        pq.write_table(table, path / "part-0.parquet")
        return
    from deltalake import write_deltalake

    if path.exists() and not (path / "_delta_log").is_dir():
        shutil.rmtree(path)  # a parquet directory from an earlier run: replace it, do not mix layouts
    path.mkdir(parents=True, exist_ok=True)
    write_deltalake(str(path), table, mode="overwrite", schema_mode="overwrite")


def sample_counts(documents: list[dict], validation: list[dict]) -> dict:
    """What the sample holds: documents per source, empty, garbled, over budget, validation rows."""
    kinds = Counter(document_kind(d["text"]) for d in documents)
    return {
        "documents": len(documents),
        "per_source": dict(Counter(d["source"] for d in documents)),
        "empty": kinds["empty"],
        "garbled": kinds["garbled"],
        "over_budget": kinds["over_budget"],
        "validation_rows": len(validation),
        "validation_docs": dict(Counter(r["source"] for r in validation if r["slot"] == validation[0]["slot"]))
        if validation else {},
    }


def write_sample(out_dir: str | Path, fmt: str = "delta", seed: int = 7, code: bool = False) -> dict:
    """Write ``out_dir/documents`` and ``out_dir/validation`` (Delta or parquet); return the counts.

    ``code`` adds the demo's second scorer group: :data:`CODE_DOCS` ``py_snippets`` modules and teacher
    labels on its 6 slots. Overwrites both tables, so running it twice leaves the same data.
    """
    import pyarrow as pa

    if fmt not in ("delta", "parquet"):
        raise ValueError(f"fmt must be 'delta' or 'parquet', got {fmt!r}")
    out = Path(out_dir)
    documents = generate_documents(seed)
    slots = [f"A{i}" for i in range(1, 16)]
    validation = generate_validation(documents, slots, seed=seed + 4)
    if code:
        code_docs = generate_code_documents(seed)
        dims = code_dimensions()
        validation += generate_validation(code_docs, [slot for slot, _ in dims], seed=seed + 5,
                                          per_source=CODE_VALIDATION_DOCS, dimensions=dims,
                                          sources=(CODE_SOURCE,), noise_slots=CODE_NOISE_SLOTS)
        documents += code_docs
    doc_schema, val_schema = _schemas()
    _write_table(pa.Table.from_pylist(documents, schema=doc_schema), out / "documents", fmt)
    _write_table(pa.Table.from_pylist(validation, schema=val_schema), out / "validation", fmt)
    return sample_counts(documents, validation)


def make_sample_main(argv: list[str] | None) -> int:
    """``mira-spark make-sample --out data/sample [--format delta|parquet] [--seed 7]``."""
    parser = argparse.ArgumentParser(prog="mira-spark make-sample",
                                     description="Write the deterministic sample corpus and its teacher labels.")
    parser.add_argument("--out", default="data/sample", help="output directory (documents/ and validation/)")
    parser.add_argument("--format", dest="fmt", choices=("delta", "parquet"), default="delta")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--with-code", action="store_true",
                        help=f"add {CODE_DOCS} {CODE_SOURCE} documents for the demo's second scorer group "
                             "(anchors/code/, 6 slots) and their teacher labels")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts = write_sample(args.out, fmt=args.fmt, seed=args.seed, code=args.with_code)
    counts["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(counts, ensure_ascii=False, indent=2), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(make_sample_main(None))
