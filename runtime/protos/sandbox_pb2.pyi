from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteRequest(_message.Message):
    __slots__ = ("id", "code", "stdin", "timeout_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    code: str
    stdin: str
    timeout_s: float
    def __init__(self, id: _Optional[str] = ..., code: _Optional[str] = ..., stdin: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ExecuteResult(_message.Message):
    __slots__ = ("id", "status", "exit_code", "has_exit_code", "stdout", "stderr", "duration_s", "truncated", "worker", "channel")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    exit_code: int
    has_exit_code: bool
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool
    worker: str
    channel: bytes
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., exit_code: _Optional[int] = ..., has_exit_code: _Optional[bool] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., duration_s: _Optional[float] = ..., truncated: _Optional[bool] = ..., worker: _Optional[str] = ..., channel: _Optional[bytes] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("ready", "backend", "isolated", "running", "completed")
    READY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    backend: str
    isolated: bool
    running: int
    completed: int
    def __init__(self, ready: _Optional[bool] = ..., backend: _Optional[str] = ..., isolated: _Optional[bool] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ...) -> None: ...
