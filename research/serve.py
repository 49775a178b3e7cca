"""Serves an exported model over HTTP (aiohttp) with dynamic batching.

`python -m research.serve --model=DIR --port=8000`: `POST /v1/predict` with
`{"instances": [...]}` answers `{"predictions": [...]}` (each what `predict` writes for that
input), `GET /v1/model` the signature, `GET /healthz`. SIGTERM answers requests in flight,
then exits.
"""

import asyncio
import json
import tempfile
import time

from absl import app, flags, logging
from aiohttp import web

from research import inference, predict
from research.errors import UserError

FLAGS = flags.FLAGS


class QueueFullError(Exception):
    """More examples are waiting than the queue holds."""


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


def make_app(predictor, *, max_batch_size=32, max_wait_ms=5.0, max_queue=1024, max_bytes=2**20):
    """The aiohttp application serving `predictor` (an `inference.Predictor`)."""
    batcher = Batcher(predictor, max_batch_size, max_wait_ms, max_queue)
    signature = {k: v for k, v in predictor.signature.items() if k != "parameters"}

    async def handle_predict(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as error:
            return _error(400, f"The request body is not JSON ({error}).")
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            return _error(400, 'The request must be a JSON object {"instances": [...]}.')
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

    async def handle_health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def start(app_: web.Application) -> None:
        batcher.task = asyncio.get_running_loop().create_task(batcher.run())

    async def stop(app_: web.Application) -> None:  # after the requests in flight are answered
        batcher.task.cancel()

    application = web.Application(client_max_size=max_bytes)
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


def main(argv) -> None:
    del argv
    try:
        with tempfile.TemporaryDirectory() as scratch:
            predictor = predict.predictor_from_flags(scratch)
            sizes = tuple(s for s in inference.BATCH_SIZES if s <= FLAGS.max_batch_size)
            predictor.batch_sizes = sizes or (1,)
            start = time.time()
            predictor.warm_up()
            logging.info("Compiled batch sizes %s in %.1f s.", sizes, time.time() - start)
            application = make_app(
                predictor,
                max_batch_size=predictor.batch_sizes[-1],
                max_wait_ms=FLAGS.max_wait_ms,
                max_queue=FLAGS.max_queue,
                max_bytes=FLAGS.max_request_bytes,
            )
            import uvloop

            web.run_app(
                application,
                host=FLAGS.host,
                port=FLAGS.port,
                shutdown_timeout=FLAGS.shutdown_timeout_s,
                access_log=None,
                loop=uvloop.new_event_loop(),
                print=lambda _: print(f"Serving on http://{FLAGS.host}:{FLAGS.port}", flush=True),
            )
    except UserError as error:
        raise SystemExit(f"Error: {error}") from None


if __name__ == "__main__":
    predict.define_flags()
    flags.DEFINE_string("host", "127.0.0.1", "The address to listen on.")
    flags.DEFINE_integer("port", 8000, "The port to listen on.")
    flags.DEFINE_integer("max_batch_size", 32, "Largest batch; 1 turns dynamic batching off.")
    flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits for more examples.")
    flags.DEFINE_integer("max_queue", 1024, "Examples waiting before requests get 503.")
    flags.DEFINE_integer("max_request_bytes", 2**20, "Larger request bodies get 413.")
    flags.DEFINE_float("shutdown_timeout_s", 30.0, "How long SIGTERM waits for requests.")
    app.run(main)
