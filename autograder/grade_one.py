"""Grade ONE submission in its own throw-away nbgrader course (run as a child process by the pipeline).

    python -m autograder.grade_one JOB.json      # writes result.json next to JOB.json

The job folder holds a complete course: the instructor's nbgrader_config.py (plus the sandbox kernel and
timeouts appended), source/, release/, a private copy of the gradebook made by ``generate_assignment``, and
``submitted/<student>/<assignment>/<notebook>.ipynb``. Steps: nbgrader autograde -> (issue 7) the
judge's verdicts replace the kernel's -> nbgrader generate_feedback -> result.json.
Nothing here writes outside the job folder; the pipeline merges the results.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path

from autograder import sandbox
from autograder.cells import cell_source, is_test_cell, nbgrader_meta


STARTED = time.perf_counter()
EXECUTE_SECONDS = {"kernel_start": 0.0, "cells": 0.0}  # inside nbgrader's autograde (CappedExecute)

# Output kept from the student's kernel, in bytes (issue 12): nbgrader's LimitOutput counts lines only, and a
# 200 MB print in one line made a 200 MB feedback page. Text beyond the cap is cut with a marker
# "... (output cut: N bytes ...)"; an image that does not fit is replaced by its text form or dropped.
OUTPUT_CELL_BYTES = 1 * 2**20  # outputs of one cell
OUTPUT_NOTEBOOK_BYTES = 5 * 2**20  # outputs of one notebook (graded test cells are served first)
OUTPUT_MESSAGE_BYTES = 8 * 2**20  # one message from the kernel: a larger one is dropped unread (ZMQ_MAXMSGSIZE)


def _load_api(course: Path, execute: bool = True, set_aside_tests: bool = False):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.converters.autograde import Autograde
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    from autograder.set_aside import PutBackTestCells, SetAsideTestCells

    CappedExecute, CapOutputs = output_cap_classes()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    steps = Autograde.class_traits()["autograde_preprocessors"].default()
    if not execute:  # record the submission (cells restored, gradebook rows) without running it
        config.Autograde.autograde_preprocessors = [p for p in steps if p is not Execute]
    elif set_aside_tests:  # the judge runs the test cells: the kernel runs everything else
        config.Autograde.autograde_preprocessors = [
            q for p in steps for q in ([SetAsideTestCells, CappedExecute, CapOutputs, PutBackTestCells]
                                       if p is Execute else [p])]
    else:
        config.Autograde.autograde_preprocessors = [
            q for p in steps for q in ([CappedExecute, CapOutputs] if p is Execute else [p])]
    # the feedback page also shows what the judge printed: the same caps apply to the whole page
    config.GenerateFeedback.preprocessors = [CapOutputs] + list(
        GenerateFeedback.class_traits()["preprocessors"].default())
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    api.log_level = "WARN"
    return api


# ----------------------------------------------------------------------------- output caps (issue 12)
def _size(value) -> int:
    """Bytes of the text and binary data in an output or message content (keys and structure not counted)."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 8


def _cut_text(text, room: int) -> str:
    text = "".join(text) if isinstance(text, list) else str(text)
    if _size(text) <= room:
        return text
    return text.encode("utf-8", "surrogatepass")[:max(room, 0)].decode("utf-8", "ignore")


def shrink_output(kind: str, content: dict, room: int) -> dict | None:
    """A copy of an output (or of an output message's content) cut to about ``room`` bytes, or None when
    nothing of it fits. An error is never dropped (nbgrader scores a cell by whether it holds one): it is cut
    to its first kilobytes instead."""
    if kind == "stream":
        return {**content, "text": _cut_text(content.get("text", ""), room)} if room > 0 else None
    if kind == "error":
        room = max(room, 2000)
        lines, used = [], 0
        for line in content.get("traceback") or []:
            used += _size(line)
            if used > room // 2:
                lines.append("... (traceback cut)")
                break
            lines.append(line)
        return {**content, "ename": _cut_text(content.get("ename", ""), 200),
                "evalue": _cut_text(content.get("evalue", ""), room // 2), "traceback": lines}
    if kind in ("display_data", "execute_result"):
        text = (content.get("data") or {}).get("text/plain")
        if room <= 0 or text is None:
            return None
        return {**content, "data": {"text/plain": _cut_text(text, room)}, "metadata": {}}
    return None


_MARKER = re.compile(r"\n\.\.\. \(output cut: (?:(\d{1,15}) bytes; the grader keeps at most [\d.e+-]+ MB of output per cell"
                     r" and [\d.e+-]+ MB per notebook)?(?:; )?(?:(\d{1,15}) message\(s\) of more than [\d.e+-]+ MB from the"
                     r" kernel were dropped unread)?\)\n")


def marker_counts(output) -> tuple[int, int] | None:
    """(bytes cut, messages dropped) if ``output`` is a marker made by ``OutputBudget.note_cut``, else None.

    A later pass (``CapOutputs`` after ``CappedExecute``, then again on the feedback page) folds these counts
    into its own marker instead of counting the marker as output, which it would cut and then report as the
    only bytes cut. A student who prints marker text only changes what their own marker says (counts of more
    than 15 digits are not a marker: plain output, capped as such)."""
    text = marker_text(output)
    if not isinstance(text, str):
        return None
    found = _MARKER.fullmatch(text)
    if found is None or not any(found.groups()):
        return None
    return int(found.group(1) or 0), int(found.group(2) or 0)


def marker_text(output):
    """The text of a marker output: display data, which nbgrader's LimitOutput (a line cap on streams only,
    run after CapOutputs) never drops; a stream marker, as feedback made before that change has, still counts."""
    if output.get("output_type") == "display_data":
        return (output.get("data") or {}).get("text/plain")
    return output.get("text") if output.get("output_type") == "stream" else None


class OutputBudget:
    """Bytes of output kept per cell and per notebook, and what was cut (shown by a marker output)."""

    def __init__(self, cell_bytes: int = OUTPUT_CELL_BYTES, notebook_bytes: int = OUTPUT_NOTEBOOK_BYTES):
        self.cell_bytes, self.notebook_bytes = cell_bytes, notebook_bytes
        self.used: dict[int, int] = {}
        self.total = 0
        self.cut: dict[int, dict] = {}  # cell index -> {"bytes": n, "dropped": n, "marker": output node}

    def room(self, index: int) -> int:
        return max(0, min(self.cell_bytes - self.used.get(index, 0), self.notebook_bytes - self.total))

    def take(self, index: int, n: int) -> None:
        self.used[index] = self.used.get(index, 0) + n
        self.total += n

    def forget(self, index: int) -> None:
        """The cell's outputs were cleared: what they held is free again."""
        self.total -= self.used.pop(index, 0)
        self.cut.pop(index, None)

    def note_cut(self, outputs: list, index: int, n: int = 0, dropped: int = 0) -> None:
        """Record ``n`` bytes cut (or ``dropped`` messages too large to read) and keep the cell's marker up to
        date: one stream output, added where the first cut happened."""
        from nbformat.v4 import new_output

        state = self.cut.setdefault(index, {"bytes": 0, "dropped": 0, "marker": None})
        state["bytes"] += n
        state["dropped"] += dropped
        parts = []
        if state["bytes"]:
            parts.append(f"{state['bytes']} bytes; the grader keeps at most {_mb(self.cell_bytes)} of output per "
                         f"cell and {_mb(self.notebook_bytes)} per notebook")
        if state["dropped"]:
            parts.append(f"{state['dropped']} message(s) of more than {_mb(OUTPUT_MESSAGE_BYTES)} from the kernel"
                         " were dropped unread")
        text = f"\n... (output cut: {'; '.join(parts)})\n"
        if state["marker"] is None or not any(o is state["marker"] for o in outputs):
            state["marker"] = new_output("display_data", data={"text/plain": text})
            outputs.append(state["marker"])
        else:
            state["marker"]["data"]["text/plain"] = text


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


def _is_graded_cell(cell) -> bool:
    return bool(nbgrader_meta(cell).get("grade"))


@functools.lru_cache(maxsize=None)
def output_cap_classes():
    """(CappedExecute, CapOutputs): nbgrader preprocessors, made on first use (nbgrader is imported late)."""
    import zmq
    import zmq.asyncio
    from nbclient.util import run_sync
    from nbformat import NotebookNode
    from nbgrader.preprocessors import Execute, NbGraderPreprocessor
    from traitlets import Bool

    class CappedExecute(Execute):
        """nbgrader's Execute, with the grading process's memory bounded whatever the kernel sends.

        - every socket to the kernel refuses a message larger than OUTPUT_MESSAGE_BYTES before reading it
          (ZMQ_MAXMSGSIZE; the connection is dropped and made again): a 200 MB print never enters this
          process. A cell whose output lost a message that way goes on (``raise_on_iopub_timeout`` off: its
          "idle" status may be lost too) and ends with a marker saying so;
        - outputs are kept as they arrive only up to OUTPUT_CELL_BYTES per cell and OUTPUT_NOTEBOOK_BYTES per
          notebook (display updates and widget messages count too); what is cut is counted in a marker.
        """

        raise_on_iopub_timeout = Bool(False, help="a message dropped for its size may take the cell's idle "
                                                  "status with it: the cell still ends").tag(config=True)

        def preprocess(self, nb, resources=None, km=None):
            self._budget = OutputBudget()
            self._monitor = None
            self._context = zmq.asyncio.Context()
            self._context.setsockopt(zmq.MAXMSGSIZE, OUTPUT_MESSAGE_BYTES)
            self._started, self._ready = time.perf_counter(), None
            try:
                return super().preprocess(nb, resources, km)
            finally:
                self._context.destroy(linger=0)
                EXECUTE_SECONDS["cells"] += time.perf_counter() - (self._ready or self._started)

        def create_kernel_manager(self):
            km = super().create_kernel_manager()
            make_client = km.client
            km.client = lambda **kw: make_client(**{"context": self._context, **kw})
            return km

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            if getattr(self.km, "transport", "tcp") == "ipc":  # the sandboxed kernel: its sockets are bound
                sandbox.lock_scratch(os.path.dirname(self.km.ip))
            self._monitor = kc.iopub_channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self._ready = time.perf_counter()
            EXECUTE_SECONDS["kernel_start"] += self._ready - self._started
            return kc

        start_new_kernel_client = run_sync(async_start_new_kernel_client)

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            try:
                return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            finally:
                dropped = 0
                while self._monitor is not None and self._monitor.get(zmq.EVENTS) & zmq.POLLIN:
                    await self._monitor.recv_multipart()
                    dropped += 1
                if dropped:
                    self._budget.note_cut(cell.outputs, cell_index, dropped=dropped)
                    await self._reconnect_iopub()

        execute_cell = run_sync(async_execute_cell)

        async def _reconnect_iopub(self):
            """libzmq closes a connection that brought a message over ZMQ_MAXMSGSIZE for good: connect a new
            iopub socket for the next cells, and wait (at most 2 s) for the kernel's welcome on it."""
            kc = self.kc
            if kc is None:
                return
            old = kc._iopub_channel
            try:
                old.socket.disable_monitor()
            except (AttributeError, zmq.ZMQError):
                pass
            self._monitor.close(linger=0)
            old.close()
            kc._iopub_channel = None
            channel = kc.iopub_channel
            channel.start()
            self._monitor = channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    msg = await channel.get_msg(timeout=max(0.01, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - queue.Empty: no welcome (an older kernel), go on
                    break
                if msg.get("msg_type") == "iopub_welcome":
                    break

        def process_message(self, msg, cell, cell_index):
            kind = msg["msg_type"]
            if kind in ("stream", "display_data", "execute_result", "error", "update_display_data") \
                    or kind.startswith("comm"):
                if self.clear_before_next_output and kind not in ("update_display_data",) \
                        and not kind.startswith("comm"):
                    cell.outputs[:] = []  # the delayed clear_output nbclient would do now
                    self.clear_display_id_mapping(cell_index)
                    self.clear_before_next_output = False
                    self._budget.forget(cell_index)
                size = _size(msg.get("content")) + sum(len(b) for b in msg.get("buffers") or [])
                room = self._budget.room(cell_index)
                if size > room:
                    small = shrink_output(kind, msg["content"], room) if kind != "update_display_data" else None
                    kept = _size(small) if small is not None else 0
                    result = None
                    if small is not None:
                        self._budget.take(cell_index, kept)
                        result = super().process_message({**msg, "content": small}, cell, cell_index)
                    self._budget.note_cut(cell.outputs, cell_index, n=max(size - kept, 0))
                    return result
                self._budget.take(cell_index, size)
            result = super().process_message(msg, cell, cell_index)
            if kind == "clear_output" and not msg["content"].get("wait"):
                self._budget.forget(cell_index)
            return result

    class CapOutputs(NbGraderPreprocessor):
        """The same caps on a whole notebook (after execution, and on the page feedback is made from):
        graded test cells first, so the judge's verdicts always fit; then the other cells in order. Markdown
        attachments count against the notebook's total."""

        cell_bytes = OUTPUT_CELL_BYTES
        notebook_bytes = OUTPUT_NOTEBOOK_BYTES

        def preprocess(self, nb, resources):
            budget = OutputBudget(self.cell_bytes, self.notebook_bytes)
            order = sorted(range(len(nb.cells)), key=lambda i: not _is_graded_cell(nb.cells[i]))
            for index in order:
                cell = nb.cells[index]
                if cell.get("attachments"):
                    size = _size(cell["attachments"])
                    if size <= budget.room(index):
                        budget.take(index, size)
                    else:
                        del cell["attachments"]
                if cell.cell_type != "code":
                    continue
                kept, cut = [], 0
                for out in cell.get("outputs", []):
                    earlier = marker_counts(out)
                    if earlier is not None:  # an earlier pass's marker: its counts go into this pass's marker
                        budget.note_cut(kept, index, n=earlier[0], dropped=earlier[1])
                        continue
                    size, room = _size(out), budget.room(index)
                    if size <= room:
                        kept.append(out)
                        budget.take(index, size)
                        continue
                    small = shrink_output(out.get("output_type", ""), out, room)
                    if small is not None:
                        small = NotebookNode(small)
                        kept.append(small)
                        budget.take(index, _size(small))
                    cut += size - (_size(small) if small is not None else 0)
                if cut:
                    budget.note_cut(kept, index, n=cut)
                cell.outputs = kept
            return nb, resources

    return CappedExecute, CapOutputs


def restore_nbgrader_metadata(submitted: Path, release: Path) -> list[str]:
    """Put back the nbgrader metadata a student changed, in the job's COPY of the submission.

    nbgrader 0.9.6 aborts the whole notebook on some of these (a test cell whose "grade" flag was
    switched off: "Inconsistent checksums"; a duplicated test cell: KeyError 'grade_id' after
    DeduplicateIds, cf. jupyter/nbgrader#1083). Students never need to edit this metadata, so: cells with a
    known grade_id get the released metadata back (the last copy keeps it, as DeduplicateIds would choose;
    earlier copies become plain cells), cells with an unknown grade_id lose their nbgrader metadata (the
    original cell is then restored by OverwriteCells.add_missing_cells), and cell ids are made unique.
    """
    nb = json.loads(submitted.read_text())
    released = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]
                for c in json.loads(release.read_text())["cells"]
                if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")}
    changed, ids = [], set()
    if not all(isinstance(cell, dict) for cell in nb["cells"]):
        changed.append(f"removed {sum(not isinstance(c, dict) for c in nb['cells'])} cell(s) that were not JSON objects")
        nb["cells"] = [cell for cell in nb["cells"] if isinstance(cell, dict)]
    for i, cell in enumerate(nb["cells"]):  # damaged metadata (not an object, a grade_id that is not a string)
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = {}
            changed.append(f"cleared the metadata of cell {i + 1} (not a JSON object)")
        grader = cell["metadata"].get("nbgrader", {})
        if not isinstance(grader, dict) or not isinstance(grader.get("grade_id", ""), str):
            del cell["metadata"]["nbgrader"]  # as for an unknown grade_id: the original cell is put back
            changed.append(f"removed damaged nbgrader metadata of cell {i + 1}")
    last = {}
    for i, cell in enumerate(nb["cells"]):
        gid = nbgrader_meta(cell).get("grade_id")
        if gid:
            last[gid] = i
    for i, cell in enumerate(nb["cells"]):
        meta = cell["metadata"]
        if "nbgrader" in meta:
            gid = meta["nbgrader"].get("grade_id")
            if gid in released and last.get(gid) == i:
                if meta["nbgrader"] != released[gid]:
                    meta["nbgrader"] = dict(released[gid])
                    changed.append(f"restored nbgrader metadata of cell {gid}")
            else:
                del meta["nbgrader"]
                changed.append(f"ignored {'a duplicate of' if gid in released else 'unknown'} cell {gid}")
        if cell.get("id") in ids or "id" in cell and not isinstance(cell["id"], str):
            cell["id"] = f"cell-{i}-renumbered"
        ids.add(cell.get("id"))
    if changed:
        submitted.write_text(json.dumps(nb, indent=1))
    return changed


def test_cell_changes(submitted: Path, release: Path) -> list[str]:
    """What the student did to the released test cells (they are graded from the instructor's copy anyway):
    ``test cell X was deleted: the original was restored`` / ``... was edited: the original was graded``."""
    def tests(path: Path) -> dict[str, str]:
        cells = json.loads(path.read_text()).get("cells", [])
        return {nbgrader_meta(c)["grade_id"]: cell_source(c).strip() for c in cells
                if isinstance(c, dict) and is_test_cell(c)}

    released, mine = tests(release), tests(submitted)
    notes = []
    for gid, text in released.items():
        if gid not in mine:
            notes.append(f"test cell {gid} was deleted: the original was restored")
        elif mine[gid] != text:
            notes.append(f"test cell {gid} was edited: the original was graded")
    return notes


def _cell_messages(autograded: Path) -> dict[str, str]:
    """grade_id -> the error a graded cell ended with in the student's kernel ("" if none)."""
    messages = {}
    if not autograded.exists():
        return messages
    nb = json.loads(autograded.read_text())
    for cell in nb.get("cells", []):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if gid and errors:
            messages[gid] = f"{errors[-1].get('ename', '')}: {errors[-1].get('evalue', '')}".strip(": ")[:300]
    return messages


def nbgrader_checks(course: Path, job: dict) -> list[dict]:
    """Per test cell: score, max, passed and message as nbgrader's autograde recorded them."""
    from nbgrader.api import Gradebook

    checks = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name in job["notebooks"]:
            stem = name[:-len(".ipynb")]
            messages = _cell_messages(course / "autograded" / job["student"] / job["assignment"] / name)
            try:
                grades = gb.find_submission_notebook(stem, job["assignment"], job["student"]).grades
            except Exception:
                grades = []
                expected = gb.find_notebook(stem, job["assignment"]).grade_cells
                checks += [{"notebook": name, "check": c.name, "score": 0.0, "max_score": c.max_score,
                            "passed": False, "judged_by": "nbgrader", "message": "notebook not submitted"}
                           for c in expected if c.cell_type == "code"]
            for g in sorted(grades, key=lambda g: g.name):
                if g.cell_type != "code":
                    continue  # manually graded answers are not part of the autograded score
                score = g.score or 0.0
                checks.append({"notebook": name, "check": g.name, "score": score, "max_score": g.max_score,
                               "passed": score >= g.max_score, "judged_by": "nbgrader",
                               "message": messages.get(g.name, "" if score >= g.max_score else "failed")})
    return checks


class Judging:
    """The judge's verdicts for each notebook, computed in a thread while nbgrader runs the kernel (the two
    never wait for each other: the kernel's outputs are only for the feedback)."""

    def __init__(self, course: Path, job: dict):
        self.course, self.job, self.verdicts, self.error, self.seconds = course, job, {}, None, 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from autograder.judge import check_submission

        started = time.perf_counter()
        try:
            for name in self.job["notebooks"]:
                source = self.course / "source" / self.job["assignment"] / name
                submitted = self.course / "submitted" / self.job["student"] / self.job["assignment"] / name
                if submitted.exists():
                    self.verdicts[name] = check_submission(
                        source, submitted, timeout=self.job["judge_timeout"], cell_timeout=self.job["cell_timeout"],
                        sandbox_settings=self.job.get("sandbox"))
        except Exception as exc:  # noqa: BLE001 - reported as this submission's failure
            self.error = f"judge error: {type(exc).__name__}: {exc}"[:300]
        self.seconds = time.perf_counter() - started

    def wait(self) -> dict:
        self.thread.join()
        if self.error:
            raise RuntimeError(self.error)
        return self.verdicts


def apply_verdicts(course: Path, job: dict, checks: list[dict], verdicts_by_notebook: dict) -> list[dict]:
    """The judge's verdicts replace what the student's kernel reported (``autograder.judge``).

    Scores go into this job's gradebook (so feedback shows them) and each test cell's outputs in the
    autograded notebook become what the judge's run of it printed plus the verdict (so feedback shows those).
    """
    from nbgrader.api import Gradebook

    by_key = {(c["notebook"], c["check"]): c for c in checks}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name, verdicts in verdicts_by_notebook.items():
            autograded = course / "autograded" / job["student"] / job["assignment"] / name
            nb = json.loads(autograded.read_text())
            for cell in nb["cells"]:
                gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                check = by_key.get((name, gid))
                if check is None:
                    continue
                verdict = verdicts.get(gid, {"passed": False, "message": "the judge gave no verdict"})
                check.update(passed=bool(verdict["passed"]), judged_by="judge",
                             score=check["max_score"] if verdict["passed"] else 0.0,
                             message=str(verdict.get("message", ""))[:500])
                grade = gb.find_grade(gid, name[:-len(".ipynb")], job["assignment"], job["student"])
                grade.auto_score = check["score"]
                grade.manual_score = None
                text = "Grader: " + ("passed" if check["passed"] else "FAILED")
                if check["message"]:
                    text += f"\n{check['message']}"
                printed = str(verdict.get("output") or "")
                cell["outputs"] = ([{"name": "stdout", "output_type": "stream", "text": printed}] if printed else []) + \
                    [{"name": "stdout", "output_type": "stream", "text": text + "\n"}]
            gb.db.commit()
            mode = autograded.stat().st_mode
            autograded.chmod(mode | 0o200)  # nbgrader leaves it read-only (0444): only root could write it
            autograded.write_text(json.dumps(nb, indent=1))
            autograded.chmod(mode)
    return checks


def autograde_error(result: dict) -> str:
    """The most telling line of a failed nbgrader autograde's log (e.g. 'DeadKernelError: Kernel died')."""
    lines = [l.strip() for l in (result.get("log") or "").splitlines() + (result.get("error") or "").splitlines()]
    for marker in ("DeadKernelError", "Kernel died", "CellTimeoutError", "Kernel didn't respond", "Error: "):
        found = [l for l in lines if marker in l and "Please see the" not in l]
        if found:
            return found[-1].split("] ", 1)[-1][:300]
    return (lines[-1:] or ["unknown error"])[0][:300]


def cache_compiled_templates(folder: str | None) -> None:
    """Keep nbconvert's compiled Jinja templates in ``folder`` (jinja2's bytecode cache, checked against each
    template's source): every exporter compiles the feedback page's nine templates again, about half of a
    feedback page's time; with the cache only a run's first page compiles them. ``folder`` is the run's private
    folder (the grading user's, hidden from the sandbox)."""
    if not folder:
        return
    from jinja2 import FileSystemBytecodeCache
    from nbconvert.exporters.templateexporter import TemplateExporter

    create = TemplateExporter._create_environment
    if getattr(create, "cached_in", None) == folder:
        return
    Path(folder).mkdir(mode=0o700, exist_ok=True)
    cache = FileSystemBytecodeCache(folder)

    def create_with_cache(self):
        environment = create(self)
        environment.bytecode_cache = cache
        return environment

    create_with_cache.cached_in = folder
    TemplateExporter._create_environment = create_with_cache


def grade(job: dict, timings: dict) -> dict:
    course = Path(job["course"])
    cache_compiled_templates(job.get("template_cache"))
    api = _load_api(course, set_aside_tests=job["use_judge"])
    timings["start"] = time.perf_counter()
    notes = []
    for name in job["notebooks"]:
        submitted = course / "submitted" / job["student"] / job["assignment"] / name
        release = course / "release" / job["assignment"] / name
        fixed = test_cell_changes(submitted, release) + restore_nbgrader_metadata(submitted, release)
        if fixed:
            notes.append(f"{name}: " + ", ".join(fixed))
    timings["restore"] = time.perf_counter()
    judging = Judging(course, job) if job["use_judge"] else None
    result = api.autograde(job["assignment"], job["student"], force=True, create=True)
    if not result.get("success"):
        error = autograde_error(result)
        if not job["use_judge"]:
            return {"status": "failed", "reason": f"nbgrader autograde failed: {error}", "checks": []}
        # nbgrader gives up on the whole notebook when the kernel dies (os._exit, a crash): record the
        # submission without running it; the judge, which never needed that kernel, decides the scores.
        notes.append(f"the notebook could not be run to the end ({error}); scores come from the judge")
        api = _load_api(course, execute=False)
        result = api.autograde(job["assignment"], job["student"], force=True, create=True)
        if not result.get("success"):
            return {"status": "failed", "reason": f"nbgrader autograde failed: {autograde_error(result)}", "checks": []}
    timings["autograde"] = time.perf_counter()
    checks = nbgrader_checks(course, job)
    if judging is not None:
        try:
            checks = apply_verdicts(course, job, checks, judging.wait())
            timings["judge_wait"] = time.perf_counter()  # beyond the kernel's run, which it overlaps
            notes += [f"{c['check']}: {c['message'].splitlines()[0][:200]}" for c in checks if not c["passed"]
                      and any(sign in c["message"] for sign in ("did not finish within", "ended without an answer"))]
        except Exception as exc:
            return {"status": "failed", "checks": [], "reason": str(exc)[:300] if "judge error" in str(exc)
                    else f"judge error: {type(exc).__name__}: {exc}"[:300]}
    feedback = api.generate_feedback(job["assignment"], job["student"], force=True)
    timings["feedback"] = time.perf_counter()
    if not feedback.get("success"):
        notes.append("feedback could not be generated")
    return {"status": "graded", "reason": "; ".join(notes), "checks": checks,
            "judge_seconds": round(judging.seconds, 3) if judging else None}


PRELOAD = ["nbgrader.apps", "nbgrader.api", "nbgrader.converters", "nbconvert.exporters", "jupyter_client",
           "nbclient", "traitlets.config.loader", "autograder.grade_one"]  # imported once by the fork server


def die_with_parent() -> None:
    """Linux: this grading process is killed when the process that forked it ends (the pipeline's, or a dask
    worker's, fork server: it ends with the worker), so a killed worker leaves no grading running."""
    import ctypes
    import os
    import signal

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was already gone
            os._exit(1)


def forget_fork_server_pipe() -> None:
    """Close this child's copy of the pipe whose other end tells multiprocessing's fork server that the run is
    gone. CPython gives one to every child it forks; while a child holds it the fork server never sees the
    run die, and a child tied to the fork server (``die_with_parent``) then outlives a killed run."""
    import os
    from multiprocessing import forkserver

    server = forkserver._forkserver  # noqa: SLF001 - CPython keeps the pipe's end there (3.8-3.13)
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def child_main(job_file: str, env: dict, cwd: str, log_path: str) -> None:
    """Entry point of a child forked by the pipeline's fork server: its own session, log, environment."""
    import os
    import tempfile

    os.setsid()
    forget_fork_server_pipe()
    die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # TMPDIR changed: forget the folder the fork server looked up
    os.chdir(cwd)
    global STARTED
    STARTED = time.perf_counter()  # this child's own start, not the fork server's
    sys.exit(main(job_file))


def main(job_file: str) -> int:
    job_path = Path(job_file)
    job = json.loads(job_path.read_text())
    timings = {}
    try:
        result = grade(job, timings)
    except Exception as exc:  # a bug or a damaged gradebook: this submission fails, the batch goes on
        traceback.print_exc()
        result = {"status": "failed", "reason": f"grading error: {type(exc).__name__}: {exc}"[:300], "checks": []}
    marks = list(timings.items())  # seconds spent in each step, for the benchmark
    result["timings"] = {name: round(t - marks[i][1], 3) for i, (name, t) in enumerate(marks[1:])}
    result["timings"]["imports"] = round(marks[0][1] - STARTED, 3) if marks else None
    if result.get("judge_seconds") is not None:  # the judge's own time, alongside the kernel's run
        result["timings"]["judge"] = result.pop("judge_seconds")
    if "autograde" in result["timings"]:  # autograde = kernel start + cells + nbgrader's own steps
        inside = {k: round(v, 3) for k, v in EXECUTE_SECONDS.items()}
        result["timings"].update(inside, gradebook=round(result["timings"]["autograde"] - sum(inside.values()), 3))
    (job_path.parent / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
