"""Tasks of a session: started, reported on, and finished, by their workers."""

from __future__ import annotations

import uuid

from aiohttp import web

from service.application import commands
from service.edge.contract import Link, operation
from service.edge.requests import body, json_response, path_id, run_command, writer
from service.edge.responses import Recorded, TaskStarted
from service.edge.schema import CompleteTask, FailTask, ReportProgress, StartTask

routes = web.RouteTableDef()

TASK_ERRORS = (
    *("invalid_id", "forbidden", "session_not_found", "session_ended"),
    *("task_not_found", "task_finished"),
)
# What a worker calls next with the task it started.
_TASK = {"session_id": "$request.path.session_id", "task_id": "$response.body#/task_id"}
PROGRESS_LINKS = {
    "report_progress": Link("task_progress", _TASK, "report its progress"),
    "complete": Link("task_complete", _TASK, "complete it"),
    "fail": Link("task_fail", _TASK, "fail it"),
}


@routes.post("/v1/sessions/{session_id}/tasks")
@operation(
    summary="Start a task (a repeated task_id records nothing new)",
    body=StartTask,
    answers={201: TaskStarted, 200: TaskStarted},
    errors=("forbidden", "session_not_found", "session_ended"),
    links={201: PROGRESS_LINKS},
)
async def start_task(request: web.Request) -> web.Response:
    actor = writer(request)
    session_id = path_id(request, "session_id")
    sent = await body(request, StartTask)
    task_id = sent.task_id or "task_" + uuid.uuid4().hex
    position, created = await run_command(
        request,
        commands.start_task(session_id, actor, task_id=task_id, name=sent.name, total=sent.total),
    )
    return json_response({"task_id": task_id, "position": position}, 201 if created else 200)


@routes.post("/v1/sessions/{session_id}/tasks/{task_id}/progress")
@operation(
    summary="Report a task's progress",
    body=ReportProgress,
    answers={202: Recorded},
    errors=TASK_ERRORS,
)
async def task_progress(request: web.Request) -> web.Response:
    actor = writer(request)
    session_id = path_id(request, "session_id")
    task_id = path_id(request, "task_id")
    sent = await body(request, ReportProgress)
    position = await run_command(
        request,
        commands.report_progress(
            session_id, actor, task_id=task_id, done=sent.done, total=sent.total, note=sent.note
        ),
    )
    return json_response({"position": position}, 202)


@routes.post("/v1/sessions/{session_id}/tasks/{task_id}/complete")
@operation(
    summary="Complete a task",
    body=CompleteTask,
    answers={200: Recorded},
    errors=TASK_ERRORS,
)
async def task_complete(request: web.Request) -> web.Response:
    actor = writer(request)
    session_id = path_id(request, "session_id")
    task_id = path_id(request, "task_id")
    sent = await body(request, CompleteTask)
    position = await run_command(
        request, commands.complete_task(session_id, actor, task_id=task_id, result=sent.result)
    )
    return json_response({"position": position})


@routes.post("/v1/sessions/{session_id}/tasks/{task_id}/fail")
@operation(
    summary="Fail a task",
    body=FailTask,
    answers={200: Recorded},
    errors=TASK_ERRORS,
)
async def task_fail(request: web.Request) -> web.Response:
    actor = writer(request)
    session_id = path_id(request, "session_id")
    task_id = path_id(request, "task_id")
    sent = await body(request, FailTask)
    position = await run_command(
        request, commands.fail_task(session_id, actor, task_id=task_id, error=sent.error)
    )
    return json_response({"position": position})
