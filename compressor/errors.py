"""Error types. A :class:`CompressorError` is the user's fault (bad input) and exits with code 2
(a training pass that collapses: 4)."""

from __future__ import annotations


class CompressorError(Exception):
    """Bad user input: a model, option, data file or artifact that cannot be used.

    The message is one line that names the value and what is allowed; the CLI prints it
    without a traceback and exits with :attr:`exit_code`.
    """

    exit_code = 2


class ConfigError(CompressorError):
    """A pass, option, spec, recipe or CLI value that is not allowed."""


class ModelError(CompressorError):
    """A model that cannot be found, loaded or is of an unsupported architecture."""


class DataError(CompressorError):
    """A task or data file that cannot be found or parsed."""


class ArtifactError(CompressorError):
    """An input artifact (ONNX file, folder) that is missing or corrupt."""


class TargetError(CompressorError):
    """A target that is unknown or whose execution provider is unavailable."""


class CollapseError(CompressorError):
    """A training pass whose dev metric collapsed to the majority-class level (see
    :func:`compressor.metrics.training_collapse`): the run stops at that epoch and exits with 4;
    the steps before it and the step's checkpoints stay (``--resume --allow-collapse`` trains on).
    The message says what to ask for instead (a lower sparsity, ``--speedup``, ``--max-drop``)."""

    exit_code = 4


class OutputError(CompressorError):
    """The output cannot be written: disk full, quota exceeded, read-only or no permission."""

    ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG")

    @classmethod
    def from_os_error(cls, exc: OSError) -> "OutputError | None":
        """The OutputError for a failed write (None for other OSErrors, e.g. a missing file)."""
        import errno
        if exc.errno not in {getattr(errno, n) for n in cls.ERRNOS if hasattr(errno, n)}:
            return None
        where = f" {exc.filename}" if exc.filename else ""
        return cls(f"cannot write{where}: {exc.strerror or errno.errorcode.get(exc.errno, exc.errno)} "
                   "(free space or choose another --output folder)")


class StepFailed(Exception):
    """A pipeline step failed for a reason that is not bad input (e.g. verification).

    Carries the names of the steps that ran before it, so the user knows what succeeded.
    """

    exit_code = 1

    def __init__(self, step: str, before: list[str], reason: str):
        self.step, self.before, self.reason = step, before, reason
        done = ", ".join(before) if before else "none"
        super().__init__(f"step '{step}' failed: {reason} (steps completed before it: {done})")


def check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False) -> None:
    """Raise ConfigError unless ``lo <=/< value <=/< hi``; the message names value and range."""
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{name}={value!r} is out of range: allowed {interval}")


def check_choice(name: str, value: str, allowed) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed: choose one of {', '.join(map(str, allowed))}")
