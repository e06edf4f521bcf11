"""Quiet library calls: no progress bars from transformers / datasets / huggingface_hub, each warning once.

nbft calls libraries that print their own progress bars ("Loading weights 272/272", "tokenize 100%", "Creating json
from Arrow format") and repeat warnings (a ``UserWarning`` and a log line with the same text). In a notebook that
output lands in whatever cell happens to be running, and in a worker thread it lands in a random cell or the log
console. :func:`quiet` switches the libraries' progress bars off for the duration of nbft's own call and passes each
distinct warning on exactly once: to a *sink* (a panel's log area) when one is given, else to where it would have
gone anyway (``warnings.showwarning`` or the logger's handlers), so scripts benefit too.

Scopes nest and may overlap across threads: the bars go off when the first scope starts and come back when the
last one ends. A warning is delivered to the scope that claimed the thread it was raised in, else to the most
recently started scope (library threads belong to whoever started the work); the main thread only counts when a
scope claims it, so a notebook's other cells keep their warnings while a panel trains. The core never imports
IPython.

Example:
    >>> from nbft._quiet import quiet
    >>> import warnings
    >>> seen = []
    >>> with quiet(sink=lambda level, text: seen.append(text)):
    ...     for _ in range(3):
    ...         warnings.warn("the same thing", UserWarning, stacklevel=1)
    >>> seen
    ['the same thing']
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LIBRARY_LOGGERS", "Quiet", "current_scope", "enter", "preload_quietly", "quiet"]

Sink = Callable[[str, str], None]
"""``sink(level, text)``: ``level`` is ``"warning"`` or ``"error"``; ``text`` is the message, once."""

LIBRARY_LOGGERS = ("transformers", "datasets", "accelerate", "huggingface_hub", "evaluate", "torchao", "nbft")
"""Loggers whose warnings go through the active scope (their child loggers too)."""

PLAIN_TQDM_MODULES = ("transformers.modeling_gguf_pytorch_utils",)
"""Library modules that use plain ``tqdm`` (no library switch turns it off): muted by patching their ``tqdm`` name
for the scope ("Converting and de-quantizing GGUF tensors" on the first load of the offline default model)."""

NOISY_IMPORTS = {"transformers.quantizers.auto": ("torchao", "torch.utils._pytree", "torch._dynamo")}
"""Modules whose first import logs notices about optional kernels a CPU machine does not have (torchao's "Failed to
load ….so" and "Detected no triton", torch's deprecation of ``register_constant`` for torchao's enums), and the
loggers those notices come from. nbft imports them once, quietly; the notices go to nbft's debug log."""

_LOCK = threading.RLock()
_ACTIVE: list[Quiet] = []
_SAVED: dict[str, Any] = {}


class Quiet:
    """One quiet scope. Use :func:`quiet` as a context manager, or ``start()``/``stop()`` across threads.

    Args:
        sink: ``sink(level, text)`` receives each distinct warning once; ``None`` passes it on once to where it
            would have gone (the original ``warnings.showwarning`` or the logger's handlers).

    Attributes:
        messages: ``(level, text)`` of every distinct warning this scope received, in order.
    """

    def __init__(self, sink: Sink | None = None) -> None:
        self.sink = sink
        self.messages: list[tuple[str, str]] = []
        self._seen: set[str] = set()
        self._threads: set[int] = set()
        self._started = False

    # ---------------------------------------------------------------------------------------------- lifetime
    def start(self) -> Quiet:
        """Start the scope (claims the calling thread). Safe to call once; returns ``self``."""
        with _LOCK:
            if self._started:
                return self
            self._started = True
            self._threads.add(threading.get_ident())
            _ACTIVE.append(self)
            if len(_ACTIVE) == 1:
                _install()
        return self

    def stop(self) -> None:
        """End the scope (from any thread). The libraries get their bars back when no scope is left."""
        with _LOCK:
            if not self._started:
                return
            self._started = False
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            if not _ACTIVE:
                _uninstall()

    def claim_thread(self) -> None:
        """Deliver warnings raised in the calling thread to this scope (e.g. a training worker thread)."""
        self._threads.add(threading.get_ident())

    def release_thread(self) -> None:
        """Stop claiming the calling thread (e.g. the notebook's main thread once a background run has started)."""
        self._threads.discard(threading.get_ident())

    @property
    def active(self) -> bool:
        return self._started

    def __enter__(self) -> Quiet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- delivery
    def _deliver(self, level: str, text: str, forward: Callable[[], None]) -> None:
        key = " ".join(text.split())
        with _LOCK:
            if key in self._seen:
                return
            self._seen.add(key)
            self.messages.append((level, text))
        if self.sink is None:
            forward()
            return
        try:
            self.sink(level, text)
        except Exception:  # a broken sink must not hide the warning, nor break the caller
            forward()


def quiet(sink: Sink | None = None) -> Quiet:
    """A scope in which library progress bars are off and each distinct warning is delivered once.

    Example::

        with quiet():                      # a script: one line per distinct warning, no library bars
            model, tok = nbft.load_model()
        scope = quiet(sink=panel_log.add)  # a panel: warnings go to its log area
        scope.start(); ...; scope.stop()
    """
    return Quiet(sink)


def current_scope() -> Quiet | None:
    """The active scope that claims the calling thread (e.g. a panel's), or ``None``."""
    ident = threading.get_ident()
    with _LOCK:
        for scope in reversed(_ACTIVE):
            if ident in scope._threads:
                return scope
    return None


def enter() -> tuple[Quiet, bool]:
    """The scope for an nbft call: the one that already claims this thread (a panel's, whose log area must get
    the warnings), else a new started one. Returns ``(scope, owned)``: stop it when done only if ``owned``."""
    scope = current_scope()
    if scope is not None:
        return scope, False
    return quiet().start(), True


@contextlib.contextmanager
def call_scope() -> Iterator[Quiet]:
    """The scope of one nbft call (see :func:`enter`): joined when a panel's scope owns the thread, else started for
    the call and stopped after it."""
    scope, owned = enter()
    try:
        yield scope
    finally:
        if owned:
            scope.stop()


def _scope_for_current_thread() -> Quiet | None:
    ident = threading.get_ident()
    with _LOCK:
        for scope in reversed(_ACTIVE):
            if ident in scope._threads:
                return scope
        if ident == threading.main_thread().ident:
            return None  # the notebook's own cells: not nbft's work unless a scope claimed them
        # an unclaimed helper thread (e.g. a run's worker before it claims itself) belongs to the newest work
        return _ACTIVE[-1] if _ACTIVE else None


# -------------------------------------------------------------------------------------------------- warnings
def _showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line=None):
    original = _SAVED.get("showwarning", warnings._showwarning_orig)  # type: ignore[attr-defined]
    scope = _scope_for_current_thread()
    if scope is None:
        original(message, category, filename, lineno, file, line)
        return
    scope._deliver("warning", str(message), lambda: original(message, category, filename, lineno, file, line))


# -------------------------------------------------------------------------------------------------- logging
class _CaptureHandler(logging.Handler):
    """Stands in for a library logger's handlers: warnings go to the scope once, the rest passes unchanged."""

    def __init__(self, logger: logging.Logger, handlers: list[logging.Handler], propagate: bool) -> None:
        super().__init__(logging.NOTSET)
        self.logger = logger
        self.original_handlers = handlers
        self.original_propagate = propagate

    def forward(self, record: logging.LogRecord) -> None:
        for handler in self.original_handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        if self.original_propagate and self.logger.parent is not None:
            self.logger.parent.callHandlers(record)
        elif not self.original_handlers and record.levelno >= logging.lastResort.level:  # type: ignore[union-attr]
            logging.lastResort.handle(record)  # type: ignore[union-attr]

    def emit(self, record: logging.LogRecord) -> None:
        scope = _scope_for_current_thread()
        if scope is None or record.levelno < logging.WARNING:
            self.forward(record)
            return
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: let the original handlers report it as they would
            self.forward(record)
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        level = "error" if record.levelno >= logging.ERROR else "warning"
        scope._deliver(level, text, lambda: self.forward(record))


# -------------------------------------------------------------------------------------------------- install
def _progress_bar_switches() -> list[tuple[Callable[[], bool], Callable[[], None], Callable[[], None]]]:
    """(enabled?, disable, enable) for each library whose bars nbft's calls would show."""
    switches = []
    try:
        hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not its tqdm class
        hub_forced_on = hub_tqdm.HF_HUB_DISABLE_PROGRESS_BARS is False  # the user's env var wins; don't warn
    except Exception:
        hub_tqdm, hub_forced_on = None, True
    if not hub_forced_on:
        try:
            from transformers.utils import logging as hf_logging

            # transformers' switch also turns huggingface_hub's bars off and on
            switches.append(
                (hf_logging.is_progress_bar_enabled, hf_logging.disable_progress_bar, hf_logging.enable_progress_bar)
            )
        except Exception:
            if hub_tqdm is not None:
                switches.append(
                    (
                        lambda: not hub_tqdm.are_progress_bars_disabled(),
                        hub_tqdm.disable_progress_bars,
                        hub_tqdm.enable_progress_bars,
                    )
                )
    if "datasets" in sys.modules or _importable("datasets"):
        try:
            ds_tqdm = importlib.import_module("datasets.utils.tqdm")

            if ds_tqdm.HF_DATASETS_DISABLE_PROGRESS_BARS is not False:
                switches.append(
                    (
                        lambda: not ds_tqdm.are_progress_bars_disabled(),
                        ds_tqdm.disable_progress_bars,
                        ds_tqdm.enable_progress_bars,
                    )
                )
        except Exception:
            pass
    return switches


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def preload_quietly(modules: dict[str, tuple[str, ...]] | None = None) -> None:
    """Import the :data:`NOISY_IMPORTS` (or ``modules``) once, with their import-time notices sent to the
    ``nbft._quiet`` debug log instead of a cell. Modules already imported are left alone.

    Example:
        >>> preload_quietly({"json": ()})  # already imported: nothing happens
    """
    for name, loggers in (NOISY_IMPORTS if modules is None else modules).items():
        if name in sys.modules or not _importable(name.split(".", 1)[0]):
            continue
        held = _Held()
        saved = []
        for logger_name in loggers:
            logger = logging.getLogger(logger_name)
            saved.append((logger, logger.handlers, logger.propagate, logger.level))
            logger.handlers, logger.propagate = [held], False
            logger.setLevel(logging.DEBUG)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(name)
        except Exception as exc:  # the import fails again later, where its caller can report it
            logging.getLogger(__name__).debug("quiet import of %s failed: %s", name, exc)
        finally:
            for logger, handlers, propagate, level in saved:
                logger.handlers, logger.propagate = handlers, propagate
                logger.setLevel(level)
        for record in held.records:
            logging.getLogger(__name__).debug("while importing %s: %s", name, record.getMessage())
    with _LOCK:
        if _ACTIVE and "progress" in _SAVED:  # transformers arrived inside a scope: mute its plain-tqdm bars now
            _SAVED["progress"].extend(_patch_plain_tqdm(import_missing=True))


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _silenced_tqdm(original: Any) -> Callable[..., Any]:
    def tqdm(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return original(*args, **kwargs)

    tqdm.nbft_silenced = original  # type: ignore[attr-defined]
    return tqdm


def _patch_plain_tqdm(import_missing: bool = False) -> list[Callable[[], None]]:
    """Mute the plain-tqdm modules; only those already imported unless ``import_missing`` (a model load, which
    imports torch anyway: a dataset preview must not pay for importing torch)."""
    restore: list[Callable[[], None]] = []
    if "transformers" in sys.modules:
        for name in PLAIN_TQDM_MODULES:
            if name not in sys.modules and not import_missing:
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # an optional dependency is missing: that module prints nothing anyway
                continue
            original = getattr(module, "tqdm", None)
            if original is None or hasattr(original, "nbft_silenced"):
                continue
            module.tqdm = _silenced_tqdm(original)

            def put_back(module: Any = module, original: Any = original) -> None:
                if getattr(module.tqdm, "nbft_silenced", None) is original:
                    module.tqdm = original

            restore.append(put_back)
    return restore


def _install() -> None:
    restore: list[Callable[[], None]] = []
    for enabled, disable, enable in _progress_bar_switches():
        try:
            if enabled():
                disable()
                restore.append(enable)
        except Exception:  # a library's switch changed shape: its bars stay as they are
            continue
    if "torch" in sys.modules and "transformers" in sys.modules:
        preload_quietly()  # a model is about to be loaded or trained: the optional-kernel notices go to the debug log
    _SAVED["progress"] = restore + _patch_plain_tqdm()
    _SAVED["showwarning"] = warnings.showwarning
    warnings.showwarning = _showwarning
    loggers = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        capture = _CaptureHandler(logger, list(logger.handlers), logger.propagate)
        logger.handlers = [capture]
        logger.propagate = False
        loggers.append((logger, capture))
    _SAVED["loggers"] = loggers


def _uninstall() -> None:
    for logger, capture in _SAVED.pop("loggers", []):
        if capture not in logger.handlers:
            continue  # someone replaced the handlers meanwhile (e.g. logging.basicConfig(force=True)): theirs stay
        # handlers added while the scope was on (a panel's log area, a user's) stay; the capture goes
        added = [h for h in logger.handlers if h is not capture and h not in capture.original_handlers]
        logger.handlers = [*capture.original_handlers, *added]
        logger.propagate = capture.original_propagate
    if warnings.showwarning is _showwarning:
        warnings.showwarning = _SAVED.get("showwarning", warnings._showwarning_orig)  # type: ignore[attr-defined]
    _SAVED.pop("showwarning", None)
    for enable in _SAVED.pop("progress", []):
        try:
            enable()
        except Exception:
            continue
