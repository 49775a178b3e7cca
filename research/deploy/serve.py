"""Serves an exported model over HTTP (aiohttp) with dynamic batching.

`python -m experiments.serve --model=DIR --port=8000`: `POST /v1/predict` with
`{"instances": [...]}` answers `{"predictions": [...]}` (each what `predict` writes for that
input), `GET /v1/model` the signature, `GET /healthz`. SIGTERM answers requests in flight,
then exits.
"""

import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
from types import ModuleType

from absl import flags, logging
from aiohttp import web

from research.core.task import TaskLookup
from research.deploy import export, inference, predict
from research.errors import UserError

FLAGS = flags.FLAGS
# The flags `define_flags` defines are the command's (its --help lists them), not this module's.
flags.disclaim_key_flags()


# Set by Ctrl-C before the server listens. A KeyboardInterrupt raised inside a callback that
# Python ignores (a garbage-collection hook, say) would otherwise be lost.
_interrupted = threading.Event()


def _on_interrupt(signal_number, frame) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def _quiet_ignored_interrupt(unraisable) -> None:
    """Drops the traceback Python prints for a KeyboardInterrupt it had to ignore.

    `_interrupted` already holds that Ctrl-C; any other ignored exception prints as usual.
    """
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _stop_if_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


class QueueFullError(Exception):
    """More examples are waiting than the queue holds (for now: retrying may succeed)."""


class Batcher:
    """Runs waiting examples as padded batches of at most `max_batch_size` in one worker thread.

    A batch starts once `max_batch_size` examples wait or `max_wait_ms` after the first one.
    """

    def __init__(self, predictor, max_batch_size: int, max_wait_ms: float, max_queue: int):
        self.predictor, self.max_batch_size = predictor, max_batch_size
        self.max_wait, self.max_queue = max_wait_ms / 1000, max_queue
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = None

    async def predict(self, examples: list) -> list[dict]:
        if self.queue.qsize() + len(examples) > self.max_queue:
            raise QueueFullError
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in examples]
        for example, future in zip(examples, futures, strict=True):
            self.queue.put_nowait((example, future))
        return list(await asyncio.gather(*futures))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(waiting) < self.max_batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), max(timeout, 0)))
                except TimeoutError:
                    break
            examples = [example for example, _ in waiting]
            try:
                results = await loop.run_in_executor(None, self.predictor.run_batch, examples)
            except Exception as error:  # noqa: BLE001 - every waiting request must hear of it
                logging.exception("A batch failed.")
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(waiting, results, strict=True):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(result)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Requests:
    """The requests being handled (a request counts from its headers on, while its body may
    still arrive), so that shutting down can wait for them."""

    def __init__(self):
        self.count, self.stopping, self.idle = 0, False, asyncio.Event()
        self.idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if self.stopping:
            response = _error(503, "The server is shutting down; send the request elsewhere.")
            response.force_close()
            return response
        self.count += 1
        self.idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self.idle.set()


REQUESTS = web.AppKey("requests", Requests)  # the server's count of requests in flight


def make_app(predictor, *, max_batch_size=32, max_wait_ms=5.0, max_queue=1024, max_bytes=2**20):
    """The aiohttp application serving `predictor` (an `inference.Predictor`); its
    `REQUESTS` entry counts the requests in flight."""
    batcher = Batcher(predictor, max_batch_size, max_wait_ms, max_queue)
    signature = {k: v for k, v in predictor.signature.items() if k != "parameters"}
    requests = Requests()

    async def handle_predict(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(
                413,
                f"The request body is larger than this server's limit of {max_bytes} bytes "
                "(--max_request_bytes); send fewer instances per request.",
            )
        except (ValueError, UnicodeDecodeError) as error:
            return _error(400, f"The request body is not JSON ({error}).")
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list):
            return _error(400, 'The request must be a JSON object {"instances": [...]}.')
        if not instances:
            return _error(400, "The request's instances list is empty; send at least one.")
        if len(instances) > max_queue:  # a queue that never holds them: retrying cannot help
            return _error(
                413,
                f"The request has {len(instances)} instances but this server queues at most "
                f"{max_queue} (--max_queue); send at most {max_queue} per request.",
            )
        examples = []
        for index, instance in enumerate(instances):
            try:
                examples.append(predictor.codec.parse(instance))
            except inference.InputError as error:
                return _error(400, f"instances[{index}]: {error}.")
        try:
            predictions = await batcher.predict(examples)
        except QueueFullError:
            return _error(503, "The server is busy (its queue is full); retry shortly.")
        return web.json_response({"predictions": predictions})

    async def handle_model(request: web.Request) -> web.Response:
        return web.json_response(signature)

    async def handle_health(request: web.Request) -> web.Response:  # not counting itself
        return web.json_response({"status": "ok", "requests_in_flight": requests.count - 1})

    async def start(app_: web.Application) -> None:
        batcher.task = asyncio.get_running_loop().create_task(batcher.run())

    async def stop(app_: web.Application) -> None:  # after the requests in flight are answered
        batcher.task.cancel()

    application = web.Application(client_max_size=max_bytes, middlewares=[requests.middleware])
    application[REQUESTS] = requests
    application.add_routes(
        [
            web.post("/v1/predict", handle_predict),
            web.get("/v1/model", handle_model),
            web.get("/healthz", handle_health),
        ]
    )
    application.on_startup.append(start)
    application.on_cleanup.append(stop)
    return application


async def _serve(application: web.Application, host: str, port: int, timeout_s: float) -> None:
    """Serves until SIGTERM or SIGINT, then stops listening, answers the requests in flight
    (also those whose body is still arriving, which aiohttp's own shutdown would drop) for
    at most `timeout_s`, and returns."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    _stop_if_interrupted()
    runner = web.AppRunner(application, access_log=None, shutdown_timeout=timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise UserError(
            f"cannot listen on {host}:{port} ({error.strerror or error}); stop what uses that "
            "port or pass another --port."
        ) from None
    print(f"Serving on http://{host}:{port}", flush=True)
    await stop.wait()
    requests = application[REQUESTS]
    requests.stopping = True
    await site.stop()
    print(f"Stopping: answering {requests.count} requests in flight.", flush=True)
    try:
        await asyncio.wait_for(requests.idle.wait(), timeout_s)
    except TimeoutError:
        logging.warning("%d requests were still in flight after %.0f s.", requests.count, timeout_s)
    await runner.cleanup()


def check_flags() -> None:
    """Refuses flags the server cannot honour, before the model is loaded."""
    if not 1 <= FLAGS.port <= 65535:
        raise UserError(f"--port={FLAGS.port} is not a TCP port; pass one from 1 to 65535.")
    for name in ("max_batch_size", "max_queue", "max_request_bytes"):
        if FLAGS[name].value < 1:
            raise UserError(f"--{name}={FLAGS[name].value} must be 1 or more.")
    for name in ("max_wait_ms", "shutdown_timeout_s"):
        if not FLAGS[name].value >= 0:
            raise UserError(f"--{name}={FLAGS[name].value} must be 0 or more.")


def define_flags(serving_modules: dict[str, ModuleType]) -> None:
    """The serve command's flags: predict's (with the `PREDICT_OPTIONS` of `serving_modules`,
    {task: its serving module}) and the server's."""
    predict.define_flags(serving_modules)
    flags.DEFINE_string("host", "127.0.0.1", "The address to listen on.")
    flags.DEFINE_integer("port", 8000, "The port to listen on.")
    flags.DEFINE_integer("max_batch_size", 32, "Largest batch; 1 turns dynamic batching off.")
    flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits for more examples.")
    flags.DEFINE_integer(
        "max_queue", 1024, "Examples waiting before requests get 503 (larger requests get 413)."
    )
    flags.DEFINE_integer("max_request_bytes", 2**20, "Larger request bodies get 413.")
    flags.DEFINE_float("shutdown_timeout_s", 30.0, "How long SIGTERM waits for requests.")


def main(argv: list[str], *, get_task: TaskLookup) -> None:
    """The serve command, after `define_flags`; `get_task` is `experiments.get_task`."""
    del argv
    if not FLAGS["verbosity"].present:  # --verbosity=0 shows the libraries' INFO lines
        export.quiet_logs()
    signal.signal(signal.SIGINT, _on_interrupt)
    sys.unraisablehook = _quiet_ignored_interrupt
    try:
        check_flags()
        print("Loading the model and compiling its batch sizes.", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            predictor = predict.predictor_from_flags(scratch, get_task)
            sizes = tuple(s for s in inference.BATCH_SIZES if s <= FLAGS.max_batch_size)
            predictor.batch_sizes = sizes or (1,)
            start = time.time()
            predictor.warm_up()
            _stop_if_interrupted()
            print(f"Compiled batch sizes {sizes} in {time.time() - start:.1f} s.", flush=True)
            application = make_app(
                predictor,
                max_batch_size=predictor.batch_sizes[-1],
                max_wait_ms=FLAGS.max_wait_ms,
                max_queue=FLAGS.max_queue,
                max_bytes=FLAGS.max_request_bytes,
            )
            import uvloop

            uvloop.run(_serve(application, FLAGS.host, FLAGS.port, FLAGS.shutdown_timeout_s))
    except UserError as error:
        raise SystemExit(f"Error: {error}") from None
    except KeyboardInterrupt:  # before the server listened (its own handler stops it later)
        raise SystemExit("Stopped before the server started listening.") from None
