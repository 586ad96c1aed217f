"""`clipada serve`: one Ray Serve server for the module, driven by tritonclient (HTTP): health, metadata, infer equal
to `clipada predict` on the same files, pixel_values, every bad request answered 4xx, 50 concurrent requests."""

import base64
import io
import json
import math
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")

from inference import predict  # noqa: E402
from inference.serve.command import parse_args, start_server  # noqa: E402
from inference.serve.protocol import ProtocolError  # noqa: E402
from modeling_clipada import CLIPADAForAnomalySegmentation  # noqa: E402
from processing import CLIPADAImageProcessor  # noqa: E402
from training import cli  # noqa: E402

pytestmark = pytest.mark.slow  # Ray starts once for the module: about 20 s
MODEL = "widget"
MAX_REQUEST_BYTES = 200_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _save_checkpoint(folder: Path, **fields) -> Path:
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, feature_layer=3, image_score_top_k=16, smoothing_sigma=1.0
    )
    with torch.no_grad():  # a head away from its initial values, so that scores differ between images
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    for name, value in fields.items():
        setattr(model.config, name, value)
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Six random images: PNGs at the model's size and at others, and one JPEG."""
    folder = tmp_path_factory.mktemp("line")
    rng = np.random.default_rng(0)
    sizes = [(IMAGE_SIZE, IMAGE_SIZE)] * 3 + [(40, 56), (24, 30)]
    paths = []
    for index, (height, width) in enumerate(sizes):
        paths.append(folder / f"{index:03d}.png")
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(paths[-1])
    paths.append(folder / "005.jpg")
    Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, images) -> Path:
    """Thresholds that split the images: a global one at the median score, and category `bottle`'s lower."""
    folder = _save_checkpoint(tmp_path_factory.mktemp("checkpoint"))
    model = CLIPADAForAnomalySegmentation.from_pretrained(folder).eval()
    processor = CLIPADAImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        scores = sorted(model(processor(images=[str(path) for path in images])["pixel_values"]).pred_score.tolist())
    per_category = {"bottle": {"image_threshold": (scores[0] + scores[1]) / 2, "pixel_threshold": 0.55}}
    return _save_checkpoint(
        folder, image_threshold=(scores[2] + scores[3]) / 2, pixel_threshold=0.5, category_thresholds=per_category
    )


@pytest.fixture(scope="module")
def server(checkpoint):
    """The server, on a free port of 127.0.0.1, one replica, batches of up to 8 images."""
    import ray
    from ray import serve

    port = _free_port()
    if ray.is_initialized():  # a connection another module's test left behind
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never RAY_ADDRESS's
    argv = ["--model_name_or_path", str(checkpoint), "--model_name", MODEL, "--port", str(port), "--num_threads", "1"]
    url = start_server(parse_args([*argv, "--max_batch_size", "8", "--max_request_bytes", str(MAX_REQUEST_BYTES)]))
    yield url.removeprefix("http://")
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, checkpoint, images) -> dict:
    """`clipada predict` on the same files: `{category or None: {file name: row}}`, with its maps."""
    rows = {}
    for category in (None, "bottle"):
        output_dir = tmp_path_factory.mktemp("predict")
        argv = [*map(str, images), "--model_name_or_path", str(checkpoint), "--output_dir", str(output_dir)]
        predict.main(
            [*argv, "--save_maps", "npz", "--batch_size", "4"] + (["--category", category] if category else [])
        )
        lines = (output_dir / "predictions.jsonl").read_text().splitlines()
        found = {Path(row["path"]).name: row for row in map(json.loads, lines)}
        for row in found.values():
            row["anomaly_map"] = np.load(output_dir / row["map"])["anomaly_map"]
        rows[category] = found
    return rows


def _client(url: str):
    return httpclient.InferenceServerClient(url, network_timeout=120.0)


def _image_input(files: list[bytes]):
    tensor = httpclient.InferInput("image", [len(files)], "BYTES")
    return tensor.set_data_from_numpy(np.array(files, dtype=object))


def _text(element) -> str:
    """A BYTES element as text (tritonclient gives str for JSON tensors, bytes for binary ones)."""
    return element.decode() if isinstance(element, bytes) else str(element)


def _post(url: str, path: str, body: bytes) -> tuple[int, dict]:
    """A raw POST (for what tritonclient will not send): the status and the JSON answer."""
    request = urllib.request.Request(f"http://{url}{path}", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_metadata_and_readiness(server, checkpoint):
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["platform"] == "clipada_torch"
    assert {(tensor["name"], tensor["datatype"]) for tensor in metadata["inputs"]} == {
        ("image", "BYTES"),
        ("pixel_values", "FP32"),
    }
    assert {"score", "label", "normalized_score", "boxes", "anomaly_map", "pred_mask"} <= {
        tensor["name"] for tensor in metadata["outputs"]
    }
    config = json.loads((checkpoint / "config.json").read_text())
    parameters = metadata["parameters"]
    assert parameters["categories"] == ["bottle"] and parameters["family"] == "CLIP-ADA"
    assert parameters["image_threshold"] == config["image_threshold"]
    assert parameters["category_thresholds"] == config["category_thresholds"]


@pytest.mark.parametrize("category", [None, "bottle"])
def test_infer_on_image_files_decides_as_clipada_predict(server, images, predicted, category):
    parameters = {"return_map": True} | ({"category": category} if category else {})
    files = [path.read_bytes() for path in images]
    client = _client(server)
    for group in ([0, 1, 2], [3], [4], [5]):  # the maps of one request share one size
        result = client.infer(MODEL, [_image_input([files[i] for i in group])], parameters=parameters)
        labels = [_text(label) for label in result.as_numpy("label")]
        boxes = [json.loads(_text(item)) for item in result.as_numpy("boxes")]
        for position, index in enumerate(group):
            expected = predicted[category][images[index].name]
            assert result.as_numpy("score")[position] == pytest.approx(expected["score"], abs=1e-6)
            assert result.as_numpy("normalized_score")[position] == pytest.approx(expected["normalized_score"], 1e-5)
            assert labels[position] == expected["decision"] and boxes[position] == expected["boxes"]
            assert result.as_numpy("image_threshold")[position] == pytest.approx(expected["image_threshold"])
            assert result.as_numpy("pixel_threshold")[position] == pytest.approx(expected["pixel_threshold"])
            assert result.as_numpy("num_regions")[position] == expected["num_regions"]
            np.testing.assert_allclose(result.as_numpy("anomaly_map")[position], expected["anomaly_map"], atol=1e-6)
        assert result.get_response()["parameters"]["threshold_source"] == ("category" if category else "global")
    assert {row["decision"] for row in predicted[category].values()} == {"OK", "NG"}


def test_json_tensors_carry_base64_and_return_the_mask(server, images, predicted):
    files = [images[3].read_bytes()]
    body = {
        "id": "line3-17",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(files[0]).decode()]}],
        "parameters": {"return_mask": True, "pixel_threshold": 0.6},
    }
    status, answer = _post(server, f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 200 and answer["id"] == "line3-17"
    outputs = {output["name"]: output for output in answer["outputs"]}
    expected = predicted[None][images[3].name]
    assert outputs["score"]["data"][0] == pytest.approx(expected["score"], abs=1e-6)
    assert outputs["pred_mask"]["shape"] == [1, 40, 56] and outputs["pixel_threshold"]["data"] == [0.6]
    mask = np.array(outputs["pred_mask"]["data"]).reshape(40, 56)
    assert np.array_equal(mask, expected["anomaly_map"] >= np.float32(0.6))
    assert "anomaly_map" not in outputs


def test_pixel_values_score_as_the_same_image_sent_as_a_file(server, checkpoint, images):
    processor = CLIPADAImageProcessor.from_pretrained(checkpoint)
    pixel_values = processor(images=[str(path) for path in images[:3]], return_tensors="np")["pixel_values"]
    tensor = httpclient.InferInput("pixel_values", list(pixel_values.shape), "FP32")
    tensor.set_data_from_numpy(pixel_values.astype(np.float32))
    client = _client(server)
    from_pixels = client.infer(MODEL, [tensor]).as_numpy("score")
    from_files = client.infer(MODEL, [_image_input([path.read_bytes() for path in images[:3]])]).as_numpy("score")
    np.testing.assert_allclose(from_pixels, from_files, atol=1e-6)


def _bad_image_requests(images):
    valid = images[0].read_bytes()
    nan_pixels = np.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.nan, dtype=np.float32)
    return {
        "not an image": ([_image_input([b"not an image at all"])], {}, "inputs[image].data[0]"),
        "truncated": ([_image_input([valid, valid[: len(valid) // 2]])], {}, "inputs[image].data[1]"),
        "empty element": ([_image_input([b""])], {}, "inputs[image].data[0] is empty"),
        "too large": ([_image_input([b"\x89PNG" + bytes(MAX_REQUEST_BYTES)])], {}, "max_request_bytes"),
        "wrong shape": (
            [
                httpclient.InferInput("pixel_values", [1, 3, 8, 8], "FP32").set_data_from_numpy(
                    np.zeros((1, 3, 8, 8), "f4")
                )
            ],
            {},
            "inputs[pixel_values].shape",
        ),
        "wrong dtype": (
            [httpclient.InferInput("pixel_values", [1, 3, 8, 8], "FP64").set_data_from_numpy(np.zeros((1, 3, 8, 8)))],
            {},
            "inputs[pixel_values].datatype",
        ),
        "NaN pixels": (
            [httpclient.InferInput("pixel_values", list(nan_pixels.shape), "FP32").set_data_from_numpy(nan_pixels)],
            {},
            "inputs[pixel_values]",
        ),
        "unknown input": (
            [httpclient.InferInput("picture", [1], "BYTES").set_data_from_numpy(np.array([valid], dtype=object))],
            {},
            "inputs[0].name",
        ),
        "unknown category": ([_image_input([valid])], {"category": "screw"}, "parameters.category"),
        "threshold out of range": ([_image_input([valid])], {"image_threshold": 1.5}, "parameters.image_threshold"),
        "unknown parameter": ([_image_input([valid])], {"retrun_map": True}, "parameters.retrun_map"),
        "maps of several sizes": (
            [_image_input([valid, images[3].read_bytes()])],
            {"return_map": True},
            "parameters.return_map",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not an image", "truncated", "empty element", "too large", "wrong shape", "wrong dtype", "NaN pixels",
        "unknown input", "unknown category", "threshold out of range", "unknown parameter", "maps of several sizes",
    ],
)  # fmt: skip
def test_a_bad_request_is_a_4xx_naming_the_field_and_the_server_keeps_serving(server, images, case):
    inputs, parameters, field = _bad_image_requests(images)[case]
    client = _client(server)
    with pytest.raises(httpclient.InferenceServerException) as error:
        client.infer(MODEL, inputs, parameters=parameters or None)
    assert str(error.value.status()).startswith("4") and field in error.value.message(), error.value.message()
    assert "\n" not in error.value.message()
    assert client.is_server_ready() and client.infer(MODEL, [_image_input([images[0].read_bytes()])]).as_numpy("score")


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        (f"/v2/models/{MODEL}/infer", b"", 400, "body is empty"),
        (f"/v2/models/{MODEL}/infer", b"{not json", 400, "not JSON"),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": []}', 400, "inputs"),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}', 400,
         "inputs[image].data"),
        (f"/v2/models/{MODEL}/infer",
         b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}], '
         b'"parameters": {"image_threshold": NaN}}', 400, "parameters.image_threshold"),
        (f"/v2/models/{MODEL}/infer",
         b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', 400,
         "inputs[image].data[0] is not base64"),
        (f"/v2/models/{MODEL}/infer",
         b'{"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 1, 1], "data": [1' + b"0" * 400
         + b', 0, 0]}]}', 400, "too large for FP32"),
        ("/v2/models/other/infer", b"{}", 404, "model 'other'"),
        ("/v1/models/x:predict", b"{}", 404, "/v2"),
    ],
)  # fmt: skip
def test_raw_bad_requests_are_answered_with_one_line(server, path, body, status, field):
    answered, answer = _post(server, path, body)
    assert answered == status and field in answer["error"] and "\n" not in answer["error"], answer
    assert _client(server).is_server_live()


def test_50_concurrent_requests_are_all_answered_with_their_own_scores(server, images, predicted):
    files = [path.read_bytes() for path in images]
    expected = [predicted[None][path.name]["score"] for path in images]

    def ask(index: int) -> tuple[int, float]:
        image = index % len(files)
        result = _client(server).infer(MODEL, [_image_input([files[image]])], request_id=str(index))
        assert result.get_response()["id"] == str(index)
        return image, float(result.as_numpy("score")[0])

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(50)))
    assert len(answers) == 50
    for image, score in answers:
        assert math.isclose(score, expected[image], abs_tol=1e-6)


def test_a_missing_model_folder_is_a_usage_error_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--model_name_or_path", str(tmp_path / "nope")])
    errors = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and errors == [f"error: no such folder: {tmp_path / 'nope'}"]


def test_the_app_builder_takes_the_flags_as_ray_serve_arguments(checkpoint):
    from inference.serve.command import app_builder

    arguments = {"model_name_or_path": str(checkpoint), "num_replicas": 2, "max_batch_size": 4, "model_name": "w"}
    deployment = app_builder(arguments)._bound_deployment
    assert deployment.num_replicas == 2 and deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
    (options,) = deployment.init_args
    assert (options.model_name, options.max_batch_size, options.model_name_or_path) == ("w", 4, str(checkpoint))
    with pytest.raises(SystemExit):  # a bad value is argparse's usage error, as on the command line
        app_builder({"model_name_or_path": str(checkpoint), "max_batch_size": 0})


def test_a_request_of_many_small_files_that_decode_to_huge_images_is_refused_before_decoding(checkpoint):
    from inference.serve.model import ServeModel
    from inference.serve.protocol import parse_infer_request

    black = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(black, format="PNG")  # 6 Mpx in about 20 kB
    payload = [base64.b64encode(black.getvalue()).decode()] * 3
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": payload}]}
    model = ServeModel.load(str(checkpoint), "clipada", max_request_pixels=10_000_000)
    with pytest.raises(ProtocolError, match="18,000,000 pixels together, above --max_request_pixels") as error:
        model.batch_items(parse_infer_request(json.dumps(body).encode()))
    assert error.value.status == 413 and len(black.getvalue()) < 100_000


@pytest.mark.parametrize("mode", [["--resize_mode", "letterbox"], ["--tile_size", "24", "--tile_overlap", "0.25"]])
def test_a_mode_flag_serves_as_clipada_predict_scores_and_decides_in_that_mode(checkpoint, images, tmp_path, mode):
    from inference.serve.command import serve_options
    from inference.serve.model import ServeModel
    from inference.serve.protocol import parse_infer_request

    argv = [*map(str, images), "--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "predict")]
    predict.main([*argv, "--batch_size", "4", *mode])
    lines = (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()
    expected = {Path(row["path"]).name: row for row in map(json.loads, lines)}
    options = serve_options(parse_args(["--model_name_or_path", str(checkpoint), *mode]))
    model = ServeModel.load(str(checkpoint), MODEL, inference_mode=options.inference_mode)
    payload = [base64.b64encode(path.read_bytes()).decode() for path in images]
    request = parse_infer_request(
        json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": payload}]}
        ).encode()
    )
    outputs = {
        tensor["name"]: tensor["data"]
        for tensor in model.response(request, model.score_items(model.batch_items(request)))["outputs"]
    }
    np.testing.assert_allclose(outputs["score"], [expected[path.name]["score"] for path in images], atol=1e-6)
    # the checkpoint's thresholds were calibrated in squash mode: neither decides with them in this mode
    assert outputs["label"] == [expected[path.name]["decision"] for path in images]
    assert set(outputs["label"]) == {"UNCALIBRATED"} and "image_threshold" not in outputs
    assert "thresholds_note" in model.metadata()["parameters"]


def test_the_categories_of_a_reference_memory_may_be_named(checkpoint, images, tmp_path):
    from inference.serve.model import ServeModel

    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    processor = CLIPADAImageProcessor.from_pretrained(checkpoint)
    model.fit_reference(processor(images=[str(path) for path in images[:2]])["pixel_values"], ["weave", "weave"])
    model.save_pretrained(tmp_path / "few-shot")
    processor.save_pretrained(tmp_path / "few-shot")
    assert "weave" in ServeModel.load(str(tmp_path / "few-shot"), MODEL).categories
