"""Instruction templates that turn a rollout into a judge or reflection prompt.

Templates use ``{name}`` placeholders in format-string style, but are filled with
`fill`, which substitutes only the known names. That keeps the literal ``\\boxed{}``
in the text as written and leaves any braces inside a question or answer alone.

Judge templates show final answers only, never a chain of thought. Every template asks
for the verdict or answer inside ``\\boxed{}``, the only form the verifier rewards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLACEHOLDERS = ("question", "answer", "answer_a", "answer_b", "solution")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class Template:
    id: str
    kind: str  # pointwise | pairwise | reflection
    text: str
    correct_label: str = ""  # pointwise: verdict for a correct answer
    wrong_label: str = ""  # pointwise: verdict for an incorrect answer
    asserts_wrong: bool = False  # reflection: says outright that the earlier attempt is wrong

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_PLACEHOLDER.findall(self.text)))

    def fill(self, **values: str) -> str:
        return fill(self.text, **values)


def fill(text: str, **values: str) -> str:
    """Substitute {question}, {answer}, ... in one pass; other braces stay literal."""

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template needs a value for {{{key}}}")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, text)


def _pointwise(prefix: str, labels: tuple[str, str], texts: list[str]) -> list[Template]:
    return [
        Template(f"{prefix}-{i:02d}", "pointwise", t, correct_label=labels[0], wrong_label=labels[1])
        for i, t in enumerate(texts, 1)
    ]


# ---- pointwise, Yes = the answer is correct ------------------------------------------

POINTWISE_YN = _pointwise("pw-yn", ("Yes", "No"), [
    "Here is a problem together with a proposed final answer.\n\nProblem:\n{question}\n\n"
    "Proposed answer: {answer}\n\n"
    "Is the proposed answer correct? Check it carefully, then write your verdict, Yes or No, inside \\boxed{}.",

    "Problem:\n{question}\n\nA student submitted this final answer: {answer}\n\n"
    "Decide whether the student is right. Reason briefly and finish with \\boxed{Yes} if the answer is correct "
    "or \\boxed{No} if it is not. Put the verdict in \\boxed{}.",

    "You are grading a solution. Only the final answer is shown.\n\nQuestion:\n{question}\n\n"
    "Final answer given: {answer}\n\n"
    "Solve the question yourself, compare, and state Yes (correct) or No (incorrect) in \\boxed{}.",

    "Consider the following task.\n{question}\n\nSomeone claims the answer is {answer}.\n\n"
    "Is this claim true? Respond with Yes or No, and place that single word in \\boxed{}.",

    "Verify the answer below.\n\n### Question\n{question}\n\n### Answer\n{answer}\n\n"
    "Work out whether the answer is right. Your final output must be \\boxed{} containing Yes or No.",

    "Read the problem and the candidate answer, then judge the candidate.\n\n{question}\n\n"
    "Candidate: {answer}\n\n"
    "If the candidate answers the problem correctly, the verdict is Yes; otherwise it is No. "
    "Give the verdict in \\boxed{}.",

    "Check this answer.\n\nTask: {question}\nSubmitted answer: {answer}\n\n"
    "After checking, report Yes if the submitted answer is correct and No if it is wrong, written as \\boxed{}.",

    "Below is a question and one possible answer to it.\n\nQuestion: {question}\n\nPossible answer: {answer}\n\n"
    "Does the possible answer match the true answer? Think it through and put Yes or No in \\boxed{}.",

    "As a careful reviewer, assess the final answer to this problem.\n\n{question}\n\n"
    "Answer under review: {answer}\n\n"
    "Conclude with a single word, Yes when the answer is correct and No when it is incorrect, in \\boxed{}.",

    "Problem statement:\n{question}\n\nReported result: {answer}\n\n"
    "Is the reported result correct? Explain briefly, then give your Yes/No judgement in \\boxed{}.",

    "Judge whether the answer is correct.\n\nQ: {question}\nA: {answer}\n\n"
    "Write Yes if it is correct and No if it is not; the final word goes in \\boxed{}.",

    "A proposed answer to the question below needs to be checked.\n\n{question}\n\n"
    "Proposed: {answer}\n\n"
    "Recompute the result and say whether the proposal is right. Put Yes or No in \\boxed{}.",
])

# ---- pointwise, A = correct, B = incorrect ------------------------------------------

POINTWISE_AB = _pointwise("pw-ab", ("A", "B"), [
    "Here is a problem and a proposed final answer.\n\nProblem:\n{question}\n\nProposed answer: {answer}\n\n"
    "Options:\nA. The proposed answer is correct.\nB. The proposed answer is incorrect.\n\n"
    "Choose A or B and write the letter in \\boxed{}.",

    "Question:\n{question}\n\nGiven final answer: {answer}\n\n"
    "Reply A if the given answer is correct, or B if it is incorrect. Put only the letter in \\boxed{}.",

    "Evaluate the answer to this problem.\n\n{question}\n\nAnswer: {answer}\n\n"
    "(A) correct\n(B) incorrect\n\nWhich option applies? Answer with the letter inside \\boxed{}.",

    "You are checking someone's work; only their final answer is shown.\n\nTask:\n{question}\n\n"
    "Their answer: {answer}\n\n"
    "Output A when the answer is right and B when it is wrong. The letter must appear in \\boxed{}.",

    "Problem: {question}\n\nCandidate answer: {answer}\n\n"
    "Is the candidate correct? Use A for correct and B for incorrect, and box your choice with \\boxed{}.",

    "Read the following problem and the answer that was given for it.\n\n{question}\n\n"
    "Answer given: {answer}\n\n"
    "Pick one: A = the answer is correct, B = the answer is incorrect. Give the letter in \\boxed{}.",

    "Grade this answer.\n\n### Problem\n{question}\n\n### Submitted answer\n{answer}\n\n"
    "Grade A means the submission is correct; grade B means it is not. Put the grade in \\boxed{}.",

    "Determine whether the answer below solves the problem.\n\n{question}\n\nAnswer: {answer}\n\n"
    "Respond A if it does (correct) and B if it does not (incorrect), with the letter in \\boxed{}.",

    "Question:\n{question}\n\nA possible final answer is {answer}.\n\n"
    "Classify it: A for correct, B for incorrect. End your reply with the class letter in \\boxed{}.",

    "Consider the problem and the reported answer.\n\nProblem: {question}\nReported answer: {answer}\n\n"
    "Work out the solution, then say A if the reported answer is correct or B if it is wrong, inside \\boxed{}.",

    "Check the final answer for the task below.\n\n{question}\n\nFinal answer: {answer}\n\n"
    "A: correct. B: incorrect. Choose one letter and place it in \\boxed{}.",

    "Here is a question followed by an answer to verify.\n\nQ: {question}\nAnswer to verify: {answer}\n\n"
    "If the answer is correct write A, if incorrect write B, and put that letter in \\boxed{}.",
])

POINTWISE = POINTWISE_YN + POINTWISE_AB

# ---- pairwise: label is the letter of the correct answer -----------------------------

PAIRWISE = [
    Template(f"pair-{i:02d}", "pairwise", t)
    for i, t in enumerate([
        "Two final answers are given for the problem below, and exactly one of them is correct.\n\n"
        "Problem:\n{question}\n\nAnswer A: {answer_a}\nAnswer B: {answer_b}\n\n"
        "Which answer is correct? Give the letter, A or B, in \\boxed{}.",

        "Question:\n{question}\n\nCandidate A: {answer_a}\nCandidate B: {answer_b}\n\n"
        "One candidate is right and the other is wrong. Put the letter of the right one in \\boxed{}.",

        "Compare the two answers to this problem.\n\n{question}\n\n(A) {answer_a}\n(B) {answer_b}\n\n"
        "Only one is correct. Solve the problem and write A or B inside \\boxed{}.",

        "Two students answered the same problem.\n\nProblem: {question}\n\n"
        "Student A answered: {answer_a}\nStudent B answered: {answer_b}\n\n"
        "Exactly one student is correct. Which one? Reply with A or B in \\boxed{}.",

        "Pick the correct final answer.\n\n### Problem\n{question}\n\n### Answer A\n{answer_a}\n\n"
        "### Answer B\n{answer_b}\n\nOne of the two is correct. Write its letter in \\boxed{}.",

        "Here are a task and two proposed answers, one correct and one incorrect.\n\n{question}\n\n"
        "A: {answer_a}\nB: {answer_b}\n\nWork out which proposal is correct and box its letter with \\boxed{}.",

        "Problem:\n{question}\n\nOption A gives {answer_a}. Option B gives {answer_b}.\n\n"
        "Exactly one option is right. State the letter of the right option inside \\boxed{}.",

        "Decide which of two answers solves the problem.\n\n{question}\n\n"
        "First answer (A): {answer_a}\nSecond answer (B): {answer_b}\n\n"
        "Reason it out, then give A or B in \\boxed{}.",

        "You are comparing two solutions; only their final answers are shown.\n\nTask:\n{question}\n\n"
        "Solution A's answer: {answer_a}\nSolution B's answer: {answer_b}\n\n"
        "Which solution reached the correct answer? Put A or B in \\boxed{}.",

        "Question: {question}\n\nA = {answer_a}\nB = {answer_b}\n\n"
        "One of these is the correct answer. Identify it and write its letter in \\boxed{}.",

        "Read the problem and the two answers below. Exactly one answer is correct.\n\n{question}\n\n"
        "Answer A: {answer_a}\nAnswer B: {answer_b}\n\n"
        "Respond with the letter of the correct answer, written as \\boxed{}.",

        "Choose between two answers.\n\nProblem statement:\n{question}\n\n"
        "(A) {answer_a}\n(B) {answer_b}\n\n"
        "Check both against the problem; one of them is correct. Give its letter in \\boxed{}.",
    ], 1)
]

# ---- reflection on a wrong chain of thought ------------------------------------------

_HINT_COT = [
    "Below is a problem and an earlier attempt at solving it. The attempt may contain mistakes.\n\n"
    "Problem:\n{question}\n\nEarlier attempt:\n{solution}\n\n"
    "Review the attempt, fix anything that is wrong, and solve the problem. Give the final answer in \\boxed{}.",

    "Problem:\n{question}\n\nA previous solution:\n{solution}\n\n"
    "This solution might not be right. Check each step, then write a corrected solution with the final answer in \\boxed{}.",

    "Here is a question and someone's working for it.\n\nQuestion: {question}\n\nWorking:\n{solution}\n\n"
    "Be critical of the working, since it could be flawed. Solve the question yourself and put the final answer in \\boxed{}.",

    "Reconsider the problem below. A first attempt is shown; it may or may not be correct.\n\n{question}\n\n"
    "First attempt:\n{solution}\n\nProduce your own careful solution and give the final answer in \\boxed{}.",

    "Question:\n{question}\n\nDraft solution:\n{solution}\n\n"
    "Double-check the draft for errors before relying on it. Then solve the question and box the final answer with \\boxed{}.",

    "An attempted solution to the following problem is given. It is not guaranteed to be correct.\n\n"
    "### Problem\n{question}\n\n### Attempt\n{solution}\n\n"
    "Verify the reasoning, correct it where needed, and state the final answer in \\boxed{}.",
]

_ASSERT_COT = [
    "Below is a problem and an incorrect solution to it.\n\nProblem:\n{question}\n\nIncorrect solution:\n{solution}\n\n"
    "Do not repeat its mistakes. Solve the problem again from scratch and give the final answer in \\boxed{}.",

    "Question:\n{question}\n\nThe following attempt is wrong:\n{solution}\n\n"
    "Find where it goes wrong, then solve the question correctly. Put the final answer in \\boxed{}.",

    "The solution shown here reaches a wrong result.\n\nProblem: {question}\n\nWrong solution:\n{solution}\n\n"
    "Write a new, correct solution and put the final answer in \\boxed{}.",

    "Problem:\n{question}\n\nA previous attempt, which is known to be incorrect:\n{solution}\n\n"
    "Avoid the error made there, work the problem out again, and box your final answer with \\boxed{}.",

    "Someone solved this problem incorrectly.\n\n### Problem\n{question}\n\n### Their (incorrect) working\n{solution}\n\n"
    "Solve the problem properly and give the final answer in \\boxed{}.",

    "Here is a question and a flawed solution; its conclusion is not correct.\n\n{question}\n\nFlawed solution:\n{solution}\n\n"
    "Identify the flaw, then provide the correct solution with the final answer inside \\boxed{}.",
]

REFLECTION_COT = [
    Template(f"rf-cot-{i:02d}", "reflection", t, asserts_wrong=i > len(_HINT_COT))
    for i, t in enumerate(_HINT_COT + _ASSERT_COT, 1)
]

# ---- reflection on a wrong final answer ----------------------------------------------

_HINT_ANS = [
    "Problem:\n{question}\n\nA previous answer was: {answer}\n\n"
    "That answer may be wrong. Solve the problem carefully and give the final answer in \\boxed{}.",

    "Here is a question and an earlier final answer to it.\n\nQuestion: {question}\n\nEarlier answer: {answer}\n\n"
    "Check whether the earlier answer holds up, then solve the question and put the final answer in \\boxed{}.",

    "Reconsider the following problem. A first answer of {answer} was given, and it is not certain to be correct.\n\n"
    "{question}\n\nWork it out yourself and state the final answer in \\boxed{}.",

    "Question:\n{question}\n\nSuggested answer: {answer}\n\n"
    "Do not trust the suggestion blindly. Solve the question step by step and box the final answer with \\boxed{}.",

    "### Problem\n{question}\n\n### Earlier answer\n{answer}\n\n"
    "The earlier answer might contain an error. Find the correct answer and write it in \\boxed{}.",

    "Solve the problem below. A previous attempt ended with the answer {answer}, which could be mistaken.\n\n"
    "Problem: {question}\n\nGive your own final answer in \\boxed{}.",
]

_ASSERT_ANS = [
    "Problem:\n{question}\n\nIncorrect answer:\n{answer}\n\n"
    "The answer above is wrong. Do not reuse it; solve the problem again and give the final answer in \\boxed{}.",

    "Here is a question and a wrong answer to it.\n\nQuestion: {question}\n\nWrong answer: {answer}\n\n"
    "Work out the correct answer and put it in \\boxed{}.",

    "A previous attempt answered {answer}, and that is not correct.\n\nProblem:\n{question}\n\n"
    "Solve the problem properly and write the final answer in \\boxed{}.",

    "### Problem\n{question}\n\n### Rejected answer\n{answer}\n\n"
    "The rejected answer is incorrect. Find the right one and state it in \\boxed{}.",

    "Question:\n{question}\n\nThe answer {answer} has been checked and found to be wrong.\n\n"
    "Reason again from the start and box the correct final answer with \\boxed{}.",

    "Someone answered the following problem with {answer}, which is incorrect.\n\n{question}\n\n"
    "Give a correct solution, ending with the final answer in \\boxed{}.",
]

REFLECTION_ANS = [
    Template(f"rf-ans-{i:02d}", "reflection", t, asserts_wrong=i > len(_HINT_ANS))
    for i, t in enumerate(_HINT_ANS + _ASSERT_ANS, 1)
]

ALL_TEMPLATES = POINTWISE_YN + POINTWISE_AB + PAIRWISE + REFLECTION_COT + REFLECTION_ANS
TEMPLATES_BY_ID = {t.id: t for t in ALL_TEMPLATES}
assert len(TEMPLATES_BY_ID) == len(ALL_TEMPLATES), "template ids must be unique"
