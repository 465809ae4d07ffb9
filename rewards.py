"""Rewards for PURE: step boundaries, PRM step scores p_k, and the verifiable reward (answer checker).

    python rewards.py --input ROLLOUTS.jsonl --output SCORED.jsonl --prm PRM_DIR|none

Input rows (one per response): response_text, response_ids, group, gold (str or null), and prompt_ids (or prompt
text) for the PRM. Output rows carry every input field plus credit.py's fields group, step_token_counts,
process_rewards, verifiable_reward, plus extracted_answer and check_timed_out. Reference behaviour: PURE's
experience maker, github.com/CJReinforce/PURE@41f9363b8cc4af044b7fc5f7f9bbbf62139e9553 (below "PURE@41f9363"):
openrlhf/trainer/ppo_utils/experience_maker.py (below "experience_maker.py") and openrlhf/utils/utils.py.

The answer checker (grade, grade_many, is_correct) needs only the standard library and math-verify: copied alone
under any name into another project, it works. torch, transformers and this repo's common.py are imported inside
the PRM and CLI functions only, so the checker's worker processes stay light.
"""
import bisect
import functools
import itertools
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

STEP_RUN = re.compile(r"\n{2,}")  # what ends a step: a run of two or more newlines (the policy is asked for "\n\n")


# ---------------------------------------------------------------------------------------------------- steps
@functools.lru_cache(maxsize=8)
def token_texts(tokenizer) -> tuple:
    """The decoded text of every vocab id, one batched decode (< 1 s for SmolLM2's 49k ids), cached per tokenizer."""
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def separator_runs(response_ids, tokenizer) -> list:
    """(first, last) token index of each step separator in a response: the tokens that hold a run of two or more
    newlines of the decoded text, one pair per token that ends such a run (sorted by last).

    Why on the text, not on tokens: GPT-2-style tokenizers (SmolLM2, Pythia, OLMo: split pattern `\\s+(?!\\S)|\\s+`)
    encode "a\\n\\nb" as a, \\n, \\n, b, so no single token ends with "\\n\\n" (the reference's test,
    experience_maker.py:168-175) and every response would be one step. Qwen/Llama-3 tokenizers (`\\s*[\\r\\n]+`)
    keep "\\n\\n", ".\\n\\n" and "\\n\\n\\n" as one token; there the last token of a run is exactly the reference's
    separator token. A run split over several tokens ends one step, at its last token (the reference would end one
    step per token ending with "\\n\\n" there). Linear: each token's text comes from the cached vocab table, one regex
    pass over their concatenation (for byte-level BPE and byte-fallback SentencePiece the newlines are exactly the
    full decode's).
    """
    texts = token_texts(tokenizer)
    pieces = [texts[t] if 0 <= t < len(texts) else "" for t in response_ids]  # ids past the vocab: no text
    ends = list(itertools.accumulate(map(len, pieces)))  # ends[i] = char offset just past token i
    runs = {}
    for m in STEP_RUN.finditer("".join(pieces)):
        last = bisect.bisect_left(ends, m.end())  # the token holding the run's last newline
        runs[last] = bisect.bisect_right(ends, m.start())  # the token holding its first (the latest run wins)
    return [(first, last) for last, first in sorted(runs.items())]


def split_steps(response_ids, tokenizer) -> list:
    """step_token_counts: c_k for each step, each including its terminal token (the last token of its separator
    run, or the final token). sum(counts) == len(response_ids).

    A step ends at every separator (separator_runs) and one more ends at the last response token (EOS, or the last
    token of a truncated response), so K = #separators + 1 >= 1, as in the reference. When the response's last
    token ends a separator, it is the final step's end (credit.py's step_end_mask holds one True there), so
    K = #separators. "A.\\n\\nB\\n\\n\\nC" + EOS has 3 steps on every tokenizer; "A\\n\\nB\\n\\n" (no EOS) has 2.
    """
    if len(response_ids) == 0:
        raise ValueError("empty response: a response needs at least one token (its EOS)")
    ends = [last for _, last in separator_runs(response_ids, tokenizer)]
    if not ends or ends[-1] != len(response_ids) - 1:
        ends.append(len(response_ids) - 1)
    return [b - a for a, b in zip([-1] + ends[:-1], ends)]


def split_text_steps(response) -> list:
    """A response's steps as text, when only the text is at hand: the pieces between runs of two or more newlines
    (STEP_RUN), blank pieces dropped."""
    return [s for s in STEP_RUN.split(response) if s.strip()]


def step_texts(response_ids, counts, tokenizer) -> list:
    """The text of each step of one response (`counts`: split_steps'), separator newlines and EOS dropped."""
    ends = list(itertools.accumulate(counts))
    return [tokenizer.decode(response_ids[a:b], skip_special_tokens=True).strip()
            for a, b in zip([0, *ends[:-1]], ends)]


def program_scores(scorer, questions, steps) -> list:
    """Process rewards from a program instead of a PRM (ppo.py --step-scorer): scorer(questions, steps) with steps
    [B][K_b] step texts -> [B][K_b] scores, checked: one per step, each inside (-1, 1) like a PRM's p = P(good) -
    P(bad) (the min-form weights need it). A wrong shape or value is one InputError line."""
    from common import InputError

    scores = list(scorer(questions, steps))
    if len(scores) != len(steps):
        raise InputError("--step-scorer", None, None, f"{len(scores)} score lists for {len(steps)} responses")
    for i, (ps, st) in enumerate(zip(scores, steps)):
        if len(ps) != len(st) or not all(-1 < p < 1 for p in ps):
            raise InputError("--step-scorer", None, None, f"response {i}: {len(st)} steps, got scores {ps} (one per "
                                                          "step, each in (-1, 1))")
    return [[float(p) for p in ps] for ps in scores]


# ---------------------------------------------------------------------------------------------------- PRM
def prm_steps(response_ids, tokenizer, drop_fused_punctuation=True, drop_eos=True):
    """Per-step PRM content ids, as PURE@41f9363 experience_maker.py:825-870 rebuilds the PRM input: each step
    without its separator, ready for common.prm_sequence, which appends the PRM separator "\\n" after each step: the
    layout prm_train.py labels.

    A step's whole separator run is dropped: every token that holds a newline of the run (on SmolLM2 both "\\n"
    tokens). Reference quirk (drop_fused_punctuation=True): those tokens are dropped whole, so Qwen's ".\\n\\n"
    loses its "."; False re-tokenizes the step's text with its trailing whitespace stripped. The final step, when
    it ends without a separator (EOS, or cut off): drop_eos=True (reference) drops its final token (the EOS, or
    the last token of a truncated response); False keeps every token."""
    steps, start, final = [], 0, len(response_ids) - 1
    for first, last in separator_runs(response_ids, tokenizer):
        if drop_fused_punctuation:
            steps.append(list(response_ids[start:max(first, start)]))
        else:
            text = tokenizer.decode(response_ids[start:last + 1]).rstrip()
            steps.append(tokenizer.encode(text, add_special_tokens=False))
        start = last + 1
    if start <= final:  # the final step, ended by the last token rather than by a separator
        steps.append(list(response_ids[start:final + 1 - drop_eos]))
    return steps


def check_prm_head(prm_model):
    n = getattr(prm_model.config, "num_labels", None)
    if n != 2:
        raise ValueError(f"the PRM must be a 2-class token classifier (bad, good); this one has {n} labels")


def prm_scores(prm_model, prm_tokenizer, prompt_ids_list, response_ids_list, *, batch_size=16,
               drop_fused_punctuation=True, drop_eos=True) -> list:
    """p_k per step (split_steps' steps) for each response: p_k = softmax(logits)[1] - softmax(logits)[0] =
    2 P(good) - 1 (PURE@41f9363 openrlhf/utils/utils.py:160-161), read at the PRM separator "\\n" that replaces
    step k's separator (prm_steps, common.prm_sequence layout).

    Batched: sequences sorted by length, right-padded with an attention mask (causal attention makes the real
    tokens' logits independent of right padding), eval mode, no_grad. Returns list[list[float]] in input order.
    """
    import torch

    from common import prm_sequence, separator_ids

    check_prm_head(prm_model)
    prm_model.eval()
    sep = separator_ids(prm_tokenizer)
    seqs = []
    for prompt_ids, resp in zip(prompt_ids_list, response_ids_list, strict=True):
        steps = prm_steps(resp, prm_tokenizer, drop_fused_punctuation, drop_eos)
        seqs.append(prm_sequence(prompt_ids, steps, sep))  # (input_ids, ends)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    pad = prm_tokenizer.pad_token_id if prm_tokenizer.pad_token_id is not None else 0
    device = next(prm_model.parameters()).device
    out = [None] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        T = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(idx), T), dtype=torch.long)  # [B, T]
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i][0])] = torch.tensor(seqs[i][0])
            mask[r, :len(seqs[i][0])] = 1
        with torch.no_grad():
            logits = prm_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.double()  # [B,T,2]
        probs = logits.softmax(-1)  # [B, T, 2]
        # p = P(good) - P(bad) (utils.py:160-161), in float64 then kept inside (-1, 1) as credit.py requires
        # (the reference's bf16 can round a confident step to exactly +-1).
        p = (probs[..., 1] - probs[..., 0]).clamp(-1 + 1e-12, 1 - 1e-12).cpu()  # [B, T]
        for r, i in enumerate(idx):
            out[i] = p[r, seqs[i][1]].tolist()
    return out


# ---------------------------------------------------------------------------------------------------- answers
_BOX = re.compile(r"\\(?:boxed|fbox)\b")  # \fbox is what some MATH solutions and models use instead of \boxed
# "The answer is" / "Final Answer:", and the same marker in French, Chinese and Arabic (lighteval's translation
# literals: réponse, 答案, إجابة / جواب), which math-verify's English anchors do not know
_PHRASE = re.compile(r"(?i)(?:final answer|the answer|r[ée]ponse(?: finale)?|最终答案|答案|ال[إا]جابة(?: النهائية)?|الجواب)"
                     r"\s*(?:is|est|是|为|هي|هو|[:：])\s*[:：]?\s*")
# gap between two boxes that belong to one answer: "\boxed{1}, \boxed{2}", "$x = \boxed{3}$ or $x = \boxed{-1}$"
_BOX_GAP = re.compile(r"(?:[\s$,;]|\\[()\[\]]|\\q?quad|\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b|\w{1,20}\s*=)*")
_BOLD = re.compile(r"(?<![\w)}*])\*\*([^*\n]{1,200})\*\*(?![\w({*])")  # markdown **bold**, not Python's x**2
_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹٫", "01234567890123456789.")  # Arabic-Indic digits, decimal sign
_CJK_NUMBER = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef])(?=[-\d$\\])|(?<=[\d$}])(?=[\u3000-\u9fff\uff00-\uffef])")
_LIST_SEP_SPACE = re.compile(r"(\d)(?:\\,|\\ |\\;|~|\\!)(?=\d{3}(?!\d))")
_SCALE = re.compile(r"(?<![\d,.])(\d[\d,]*(?:\.\d+)?)\s*"  # a whole number (the lookbehind keeps it linear), then
                    r"(?:\\(?:text|mbox|mathrm)\s*\{\s*(thousand|million|billion|trillion)s?\s*\}"  # \text{ million}
                    r"|(thousand|million|billion|trillion)s?\b)", re.I)  # or million
_POWERS = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}


def _scaled(m):
    """"2.5 million" -> "2500000"."""
    from decimal import Decimal

    value = Decimal(m.group(1).replace(",", "")).scaleb(_POWERS[(m.group(2) or m.group(3)).lower()])
    return format(value.normalize(), "f")


def _canonical(s):
    """Rewrites applied to responses and golds alike, each linear in the text's length:
    - markdown bold dropped: "The answer is **42**." (the phrase rule read "**42**"), "**Final Answer:** **7**";
    - Arabic-Indic digits read as digits: "الإجابة هي ٩٢" (math-verify finds no number in it);
    - scale words as numbers: "5 million", "1.2 \\text{ billion}" (PRM800K's grader does the same; math-verify and
      _normalize's plain-words rule read "3 million" as 3);
    - the Unicode degree sign as ^{\\circ}: "90°" (math-verify does not read it, so "90°" != "90^\\circ" there);
    - a space between Chinese/Japanese characters and numbers: "比例为13/28" (unspaced, math-verify finds no number)."""
    s = _CJK_NUMBER.sub(" ", _BOLD.sub(r"\1", s).translate(_DIGITS))
    return re.sub(r"(?<!\s)\s*°", r"^{\\circ}", _SCALE.sub(_scaled, s))  # (?<!\s): linear on long blank runs


def _closing_braces(s):
    """{index of each "{": index of its matching "}"}, in one pass (linear even on 100 kB of "\\boxed{")."""
    stack, match = [], {}
    for j, ch in enumerate(s):
        if ch == "{":
            stack.append(j)
        elif ch == "}" and stack:
            match[stack.pop()] = j
    return match


def _boxes(response):
    """(start, end, content) of every non-empty, closed \\boxed{...} / \\fbox{...} (nested braces) or `\\boxed 5`,
    in order. Linear time."""
    boxes = list(_BOX.finditer(response))
    closing, out = _closing_braces(response) if boxes else {}, []
    for m in boxes:
        start = re.compile(r"\s*").match(response, m.end()).end()  # no slicing: linear over many boxes
        if response[start:start + 1] == "{":
            end = closing.get(start)
            content = response[start + 1:end] if end is not None else None
        else:  # "\boxed 5": the reference's extractor takes the text up to the next "$" or whitespace
            spaced = response[m.end():m.end() + 1] == " "
            content = re.compile(r"[^\s$]*").match(response, start).group(0) if spaced else None
            end = start + len(content or "") - 1
        if content and content.strip():
            out.append((m.start(), end + 1, content.strip()))
    return out


def _last_box(response):
    """Content of the last non-empty, closed \\boxed{...} / \\fbox{...}, or None."""
    boxes = _boxes(response)
    return boxes[-1][2] if boxes else None


def _joined_boxes(response):
    """"a, b, c" for the last run of two or more boxes separated only by commas, "and"/"or", "x =", math
    delimiters (math-verify reads "\\boxed{1}, \\boxed{2}" as the set {1, 2}); None if the last box stands alone."""
    boxes = _boxes(response)
    run = boxes[-1:]
    for box in reversed(boxes[:-1]):
        if not _BOX_GAP.fullmatch(response, box[1], run[0][0]):
            break
        run.insert(0, box)
    return ", ".join(b[2] for b in run) if len(run) > 1 else None


def _after_phrase(response):
    """The answer after the last "The answer is" / "Final Answer:" ($...$ or \\(...\\) if it starts one, else the
    rest of the line up to a sentence end)."""
    matches = list(_PHRASE.finditer(response))
    if not matches:
        return None
    rest = response[matches[-1].end():].split("\n", 1)[0].strip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_) and close in rest[len(open_):]:
            return rest[len(open_):rest.index(close, len(open_))].strip() or None
    rest = re.split(r"\.(?:\s|$)|。", rest, maxsplit=1)[0].strip()
    return rest or None


def _box_is_last(response):
    """Whether the last box comes after the last answer phrase. Not when "Final Answer: The final answer is $10,455$.
    I hope it is correct." follows intermediate \\boxed{200}, \\boxed{255}: that phrase is the answer (math-verify
    ranks it first too)."""
    boxes, phrases = _boxes(response), list(_PHRASE.finditer(response))
    return bool(boxes) and (not phrases or phrases[-1].start() < boxes[-1][1])


def extract_marked(response):
    """The explicitly marked final answer: the last \\boxed{}/\\fbox{}, or the text after the last "The answer is" /
    "Final Answer:" if that comes later. Linear time, safe to call anywhere. None if nothing is marked."""
    return _last_box(response) if _box_is_last(response) else _after_phrase(response)


def _mv_parse(text):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    # time limits are ours (grade's worker processes): math-verify's own use signal.alarm (main thread only)
    return parse(text, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)


def _mv_pick(text):
    """math-verify's own choice of answer in a text (its anchors, else the last LaTeX span or number), or None."""
    parsed = _mv_parse(text)
    return str(parsed[1]).strip() or None if len(parsed) > 1 else None


def _candidates(response):
    """Answer strings to try, best first (the response is correct if any is equivalent to the gold), on the
    _canonical() text:
    - a box that comes after the last answer phrase: the last box, then the last run of boxes read as one list
      ("\\boxed{1}, \\boxed{2}");
    - else an answer phrase: the text after it if answer-like, then math-verify's pick from that text, which finds
      the number in "Final Answer: The largest $n$ is 34." (else its pick from the whole response, e.g. for "The
      answer is below");
    - else: the whole text when it is a short delimiter-free bare answer such as "60%" or "x=1" (not a cut-off
      "\\boxed{1"), then math-verify's pick from the whole response (like Qwen's last-number fallback).
    One general fallback (math-verify's own pick) after the marked answer, instead of a rule per phrasing."""
    response = _canonical(response)
    if _box_is_last(response):
        out = [_last_box(response), _joined_boxes(response)]
    elif (phrase := _after_phrase(response)) is not None:
        # "Final answer: " + the text: math-verify's anchor rules then take the number after "... is", else the
        # first one (French "Réponse : il paiera 220 € d'ici 12 mois": 220, not 12). The text itself only when it
        # is answer-like ("3 apples", "Evelyn"): parsed whole, a sentence yields its last number (100 in "il reste
        # 30 € sur 100 €")
        wordy = len(re.findall(r"[^\W\d_]{2,}", re.sub(r"\\[A-Za-z]+|\$[^$]*\$", " ", phrase))) > 2
        out = [None if wordy else phrase, _mv_pick("Final answer: " + phrase) or _mv_pick(response)]
    else:
        bare = len(response) <= 200 and not re.search(r"\$|\\[(\[]|\\boxed|\\fbox", response)
        out = [response.strip() if bare else None, _mv_pick(response)]
    return list(dict.fromkeys(c for c in out if c))  # without repeats (each costs a parse for a wrong answer)


def extract_answer(response: str):
    """The final answer string of a model response (see _candidates), None if there is none. Unbounded time on
    adversarial input: call it through grade() for a time limit."""
    return next(iter(_candidates(response)), None)


def _repeating_decimal(m):
    """"0.1\\overline{6}" -> "1/6" (exact fraction of a repeating decimal)."""
    from fractions import Fraction

    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
    return f"{value.numerator}/{value.denominator}"


def _normalize(ans):
    """Rewrites math-verify gets wrong, applied to both answer strings before parsing."""
    s = _canonical(ans.strip())
    if "\\boxed" in s or "\\fbox" in s:  # a gold given as a solution, "$\boxed{...}$", "\boxed{1} and \boxed{-2}"
        s = _joined_boxes(s) or _last_box(s) or s
    s = s.strip().strip("$").strip()
    # "1\,000" / "1\ 000" / "1~000": thousands separators that math-verify reads as the product 1*0*0
    s = _LIST_SEP_SPACE.sub(r"\1", s)
    # "k_{\mathrm{B}}": math-verify keeps \mathrm in a subscript, so it differs from k_B
    s = re.sub(r"_\{\\mathrm\{([^{}]*)\}\}", r"_{\1}", s)
    # "R_{\odot}", "I_{\max}": a command as a subscript makes math-verify give up on the whole expression
    s = re.sub(r"_\{\s*\\([A-Za-z]+)\s*\}", r"_{\1}", s)
    # "0.\overline{3}": a repeating decimal that math-verify parses as 0 (it drops the \overline part)
    s = re.sub(r"(\d*)\.(\d*)\\overline\{(\d+)\}", _repeating_decimal, s)
    # "x**2 + 1": Python's power operator, which math-verify's LaTeX parser does not read
    s = re.sub(r"(?<=[\w)}])\*\*(?=[\w({])", "^", s)
    # "5 dollars", "3 apples": a number followed by plain words outside \text{} (math-verify reads 5*d*o*l*l*...)
    s = re.sub(r"^(-?[\d.,/]*\d)\s+[A-Za-z][A-Za-z ]{2,}$", r"\1", s)
    return s


def _plain(s):
    """String key for an exact-match shortcut (Hendrycks strip_string style): \\text{} wrappers, spacing commands,
    \\left/\\right and "(C)" parentheses removed, lower case. It fixes text answers math-verify parses
    differently on each side, e.g. gold "\\text{A, C}" (a string) vs "A, C" (a set of symbols)."""
    s = re.sub(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\left|\\right|\\[,;:! ]|\s", "", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s.rstrip("."))
    return s.lower()


# "I_{\max} = expr", "n_{\gamma}(\nu) = expr": a named left-hand side math-verify may fail to parse, which then
# turns the whole gold into an unparsed string; the answer is the right-hand side (OlympiadBench's judge rule).
_NAMED_LHS = re.compile(r"^\s*(\\?[A-Za-z]+(?:_\{[^{}]*\}|_\w)?\s*(?:\([^()]*\))?)\s*=(?!.*=)(.+)$", re.S)


def _approx_equal(g, p, pred_text):
    """A decimal prediction within relative 1e-4 of an irrational gold (Qwen math_equal's numeric tolerance;
    math-verify rounds to 6 decimals, so "0.6054" for cos^10(pi/10) = 0.605370 fails there). Only for irrational
    golds: a rational gold has an exact decimal or fraction form, and "9999.857" for 10000 is a wrong answer."""
    if "." not in pred_text or not (getattr(g, "is_number", False) and getattr(p, "is_number", False)):
        return False
    if g.is_rational:
        return False
    gv, pv = complex(g.evalf(30)), complex(p.evalf(30))
    return gv.imag == pv.imag == 0 and math.isclose(gv.real, pv.real, rel_tol=1e-4)


def _clearly_different(g, p, text=""):
    """Fast "no" for two numbers more than 1e-4 apart (relative), or two tuples/intervals with such a pair of
    entries: beyond every rounding rule used here, so verify()'s symbolic strategies (up to ~100 ms on e.g.
    3\\sqrt{13} vs 8\\sqrt{13} or (3, pi/2) vs (0, pi/2): the benchmark's p99) are skipped. Not for percent/degree
    answers, whose numbers verify() rescales."""
    import sympy

    if re.search(r"%|percent|pct|circ|degree", text):
        return False
    if (isinstance(g, sympy.Tuple) and isinstance(p, sympy.Tuple) and len(g) == len(p)) or (
            isinstance(g, sympy.Interval) and isinstance(p, sympy.Interval)):
        return any(_clearly_different(a, b) for a, b in zip(g.args, p.args))  # entries; interval ends
    if not all(isinstance(x, sympy.Expr) and x.is_number and x.is_finite for x in (g, p)):
        return False
    gv, pv = complex(g.evalf(20)), complex(p.evalf(20))
    return abs(gv - pv) > 1e-4 * max(abs(gv), abs(pv))


def _equivalent(pred, gold):
    from math_verify import verify

    pred, gold = _normalize(pred), _normalize(gold)
    if _plain(pred) and _plain(pred) == _plain(gold):
        return True
    # wrapped in \\boxed{}: the LaTeX parse wins outright; with "$...$" math-verify also runs sympy parse_expr
    # on the text (~25 ms per call)
    g, p = _mv_parse("\\boxed{" + gold + "}"), _mv_parse("\\boxed{" + pred + "}")
    if not g or not p:
        return False
    if _clearly_different(g[0], p[0], gold + pred):
        return False
    # allow_set_relation_comp: "x > 2" vs "(2, \infty)", "-2 \le x \le 3" vs "[-2, 3]" (off by default)
    if verify(g, p, allow_set_relation_comp=True, timeout_seconds=None):
        return True
    if _approx_equal(g[0], p[0], pred):
        return True
    not_parsed = isinstance(g[0], str) or isinstance(p[0], str)
    lhs_g, lhs_p = _NAMED_LHS.match(gold), _NAMED_LHS.match(pred)
    if lhs_g and lhs_p and (_plain(lhs_g.group(1)) != _plain(lhs_p.group(1)) or not not_parsed):
        return False  # different names, or two parsed equations math-verify already compared
    if lhs_g or lhs_p:  # compare right-hand sides
        return _equivalent(lhs_p.group(2) if lhs_p else pred, lhs_g.group(2) if lhs_g else gold)
    return False


def _check(response, gold):
    """(correct, extracted): the first candidate answer equivalent to gold, else (False, best candidate)."""
    candidates = _candidates(response)
    for pred in candidates:
        if _equivalent(pred, str(gold)):  # str: some eval sets store numeric golds as floats (amc23: 27.0)
            return True, pred
    return False, next(iter(candidates), None)


def is_correct(response: str, gold: str, timeout: float = 5.0) -> bool:
    """Whether the final answer of a full model response equals the gold answer. The check runs in a worker process
    (grade()) and counts as wrong past `timeout` seconds, whatever the input; safe from any thread or process."""
    return grade(response, gold, timeout)["correct"] is True


# ---------------------------------------------------------------------------------------------------- time limits
# Each check runs in a worker process that is killed on timeout: math-verify/sympy can run for hours on inputs like
# 10^{10^{10^{10}}}, and math-verify's own signal.alarm limits only work in the main thread. Workers are plain
# `python -c` subprocesses that load this file by its path (whatever it is called, wherever it was copied) and talk
# JSON lines over stdin/stdout (no fork of a torch/vLLM process, no re-import of the caller's __main__, fine inside
# daemonic pool workers); idle ones are reused across calls and threads. A killed one is replaced on next use.
_IDLE, _LOCK = [], threading.Lock()
_START_TIMEOUT = 120.0


def _forget_workers():
    """In a forked child: drop the parent's idle workers (their pipes are shared with the parent, so both processes
    would read each other's answers) and its lock (another thread may have held it at the fork)."""
    global _IDLE, _LOCK
    _IDLE, _LOCK = [], threading.Lock()


@functools.cache
def _forget_workers_at_fork():
    """Registers _forget_workers for every later fork, once, at the first check (importing the file changes nothing
    in the process). A second registration by a racing thread is harmless: forgetting twice is forgetting once."""
    os.register_at_fork(after_in_child=_forget_workers)


def _serve():
    """Worker loop: one JSON [response, gold] per stdin line -> one JSON [correct, extracted] per stdout line."""
    import json
    import logging
    import sys

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warning: limits are ours
    out, sys.stdout = sys.stdout, sys.stderr  # only protocol lines go to the real stdout
    _check("\\boxed{\\frac{1}{2}}", "0.5")  # warm up: sympy/ANTLR imports must not count against a call's timeout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        response, gold = json.loads(line)
        try:
            result = list(_check(response, gold))
        except Exception:  # a parser crash on odd input is a wrong answer, never an exception in the trainer
            result = [False, extract_marked(response)]
        out.write(json.dumps(result) + "\n")
        out.flush()


def _start_worker():
    import select
    import subprocess
    import sys

    # this file, loaded by its path under a name of its own (it may be renamed or copied into another project)
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('_answer_checker', "
            f"{os.path.abspath(__file__)!r}); module = sys.modules[spec.name] = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(module); module._serve()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # start-up (imports, warm-up: ~1-2 s) is not part of a check's timeout, but it is bounded too
    if not select.select([proc.stdout], [], [], _START_TIMEOUT)[0] or proc.stdout.readline() != b"ready\n":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"answer-checker worker process did not start within {_START_TIMEOUT} s")
    return proc


def grade(response, gold, timeout=5.0) -> dict:
    """dict(correct, extracted, timed_out). correct is None when gold is None (no verifiable reward, as for PURE's
    prompts whose answer is "null": experience_maker.py:1118-1129); a check that runs past `timeout` seconds is
    killed and counts as wrong (timed_out=True). Thread-safe."""
    import json
    import select

    if gold is None:
        return dict(correct=None, extracted=extract_marked(response), timed_out=False)
    _forget_workers_at_fork()
    with _LOCK:
        proc = _IDLE.pop() if _IDLE else None
    if proc is None or proc.poll() is not None:  # none idle, or the idle one died
        proc = _start_worker()
    proc.stdin.write(json.dumps([response, gold]).encode() + b"\n")
    proc.stdin.flush()
    line = proc.stdout.readline() if select.select([proc.stdout], [], [], timeout)[0] else None
    if line:
        correct, extracted = json.loads(line)
        with _LOCK:
            _IDLE.append(proc)
        return dict(correct=correct, extracted=extracted, timed_out=False)
    proc.kill()  # timed out (line None), or the worker died on this input, e.g. out of memory (line b"")
    proc.wait()
    return dict(correct=False, extracted=extract_marked(response), timed_out=line is None)


def grade_many(responses, golds, timeout=5.0, workers=None) -> list:
    """grade() over pairs, `workers` checks at a time (default: CPU count), each in its own worker process."""
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(lambda rg: grade(rg[0], rg[1], timeout), zip(responses, golds, strict=True)))


# ---------------------------------------------------------------------------------------------------- CLI
@dataclass
class Args:
    input: str
    """rollouts JSONL: response_text, response_ids, group, gold (str or null), prompt_ids (or prompt text)"""
    output: str
    """scored JSONL: the input fields + step_token_counts, process_rewards, verifiable_reward, extracted_answer"""
    prm: str
    """PRM folder (2-class token classifier + its tokenizer), or "none" for VR only (process_rewards = 0 per step)"""
    tokenizer: str | None = None
    """the policy's tokenizer folder (default: the PRM's). It must have the PRM's vocab; required with --prm none"""
    prm_prompt: Literal["templated", "question"] = "templated"
    """prompt fed to the PRM: the templated RL prompt (prompt_ids, else prompt; reference quirk) or the raw
    `question` field the PRM was trained on"""
    drop_fused_punctuation: bool = True
    """reference quirk: the PRM input drops a step's separator tokens whole, so ".\\n\\n" loses its "." """
    drop_eos: bool = True
    """reference quirk: the last step's final token (EOS) is dropped from the PRM input too"""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """PRM weights dtype (the reference runs the PRM in bf16)"""
    batch_size: int = 16
    """PRM forward batch size (sequences)"""
    timeout: float = 5.0
    """seconds per answer check; a check past it is killed and counts as wrong"""
    workers: int | None = None
    """answer-checker processes (default: CPU count)"""


def _validate(path, line, row, vocab_size):
    from common import InputError

    def need(field, ok, msg):
        if not ok:
            raise InputError(path, line, field, msg)

    for field in ("group", "response_text", "response_ids", "gold"):
        need(field, field in row, "missing")
    need("response_text", isinstance(row["response_text"], str), "must be a string")
    ids = row["response_ids"]
    need("response_ids", isinstance(ids, list) and len(ids) > 0, "must be a non-empty list of token ids")
    need("response_ids", all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids),
         f"every id must be an int in [0, {vocab_size}) (the tokenizer's vocab)")
    need("gold", row["gold"] is None or isinstance(row["gold"], str), "must be a string or null")


def _prm_prompt_ids(path, line, row, tok, prm_prompt):
    from common import InputError

    field = "question" if prm_prompt == "question" else "prompt_ids" if "prompt_ids" in row else "prompt"
    value = row.get(field)
    if field == "prompt_ids":
        if not (isinstance(value, list) and all(isinstance(t, int) and 0 <= t < len(tok) for t in value)):
            raise InputError(path, line, field, f"must be a list of token ids in [0, {len(tok)})")
        return value
    if not isinstance(value, str):
        raise InputError(path, line, field, "missing or not a string (the PRM needs the prompt)")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []  # as common.tokenize_prm_example
    return bos + tok.encode(value, add_special_tokens=False)


def run(args):
    from transformers import AutoTokenizer

    from common import InputError, read_jsonl, write_jsonl

    if args.prm == "none" and args.tokenizer is None:
        raise InputError("--tokenizer", None, None, "needed with --prm none (step splitting uses it)")
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer or args.prm)
    except (OSError, ValueError) as e:
        raise InputError(args.tokenizer or args.prm, None, "tokenizer", f"cannot load: {e}".splitlines()[0]) from None
    rows = [(n, r) for n, r in read_jsonl(args.input)]
    for n, r in rows:
        _validate(args.input, n, r, len(tok))
    counts = [split_steps(r["response_ids"], tok) for _, r in rows]
    if args.prm == "none":
        p = [[0.0] * len(c) for c in counts]  # VR only: p_k = 0 (neutral, inside credit.py's (-1, 1))
    else:
        p = _score_with_prm(args, tok, rows)
    golds = [None if r["gold"] == "null" else r["gold"] for _, r in rows]  # PURE's 8k file: "null" = no gold
    graded = grade_many([r["response_text"] for _, r in rows], golds, args.timeout, args.workers)
    out = []
    for (_, r), c, pk, g in zip(rows, counts, p, graded):
        vr = None if g["correct"] is None else int(g["correct"])  # 1/0 with a gold, null without
        out.append({**r, "step_token_counts": c, "process_rewards": pk, "verifiable_reward": vr,
                    "extracted_answer": g["extracted"], "check_timed_out": g["timed_out"]})
    write_jsonl(args.output, out)
    n_gold = sum(g["correct"] is not None for g in graded)
    print(f"{len(out)} responses, {n_gold} with gold, {sum(bool(g['correct']) for g in graded)} correct, "
          f"{sum(g['timed_out'] for g in graded)} checks timed out -> {args.output}")


def _score_with_prm(args, tok, rows):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from common import InputError

    prm_tok = AutoTokenizer.from_pretrained(args.prm)
    if prm_tok.get_vocab() != tok.get_vocab():
        raise InputError(args.prm, None, "tokenizer", f"the PRM's vocab differs from the policy tokenizer's "
                         f"({args.tokenizer}): response_ids would mean different tokens")
    model = AutoModelForTokenClassification.from_pretrained(args.prm, dtype=getattr(torch, args.dtype))
    try:
        check_prm_head(model)
    except ValueError as e:
        raise InputError(args.prm, None, "num_labels", str(e)) from None
    prompts = [_prm_prompt_ids(args.input, n, r, prm_tok, args.prm_prompt) for n, r in rows]
    return prm_scores(model, prm_tok, prompts, [r["response_ids"] for _, r in rows], batch_size=args.batch_size,
                      drop_fused_punctuation=args.drop_fused_punctuation, drop_eos=args.drop_eos)


if __name__ == "__main__":
    import sys

    import tyro

    from common import InputError

    try:
        run(tyro.cli(Args))
    except InputError as e:
        sys.exit(f"error: {e}")
