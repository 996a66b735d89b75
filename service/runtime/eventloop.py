"""Which event loop ``sessiond serve`` runs on: uvloop where it is installed,
else asyncio's own (docs/adr/0045-run-the-server-on-uvloop-where-it-is-installed.md).

``SESSIOND_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop if it can be
imported, asyncio's otherwise), ``uvloop`` (and refuse to start without it)
or ``asyncio``. The bench runs every server it compares on the loop this
module picks, so that a ratio compares servers, not loops.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

if TYPE_CHECKING:
    # Imported where a loop is made: the settings name the choices, and the
    # offline commands read the settings without starting any loop.
    import asyncio

EventLoop = Literal["auto", "uvloop", "asyncio"]
EVENT_LOOPS: tuple[str, ...] = get_args(EventLoop)
T = TypeVar("T")


class EventLoopUnavailable(RuntimeError):
    """The event loop asked for cannot be had in this Python."""


def chosen(choice: EventLoop = "auto") -> Literal["uvloop", "asyncio"]:
    """The kind of loop ``choice`` stands for here."""
    if choice != "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            if choice == "uvloop":
                raise EventLoopUnavailable(
                    "SESSIOND_EVENT_LOOP is uvloop, but uvloop is not installed here "
                    "(pip install uvloop; it is built for CPython on Linux and macOS)"
                ) from None
        else:
            return "uvloop"
    return "asyncio"


def loop_factory(choice: EventLoop = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loop ``choice`` names (``asyncio.Runner``'s
    ``loop_factory``)."""
    if chosen(choice) == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    import asyncio

    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which kind ``loop`` is, for the logs."""
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"


def run(main: Callable[[], Coroutine[Any, Any, T]], choice: EventLoop = "auto") -> T:
    """Run the coroutine ``main()`` makes on the loop ``choice`` names, as
    ``asyncio.run`` would on its own loop; its result."""
    import asyncio

    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main())
