"""The warm-up file's protobuf encoding against tensorflow-serving-api's own classes (an independent path)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tf_cartoon import serving_warmup as sw


def test_varint():
    # protobuf's encoding guide: 1 -> 01, 150 -> 96 01, 300 -> ac 02
    assert [sw.varint(n) for n in (0, 1, 127, 128, 150, 300)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\x96\x01", b"\xac\x02"]
    assert sw.varint(2 ** 35) == bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x01])
    with pytest.raises(ValueError, match="negative"):
        sw.varint(-1)


def test_prediction_log_matches_the_serving_api():
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    inputs = {"z": np.arange(6, dtype=np.float32).reshape(2, 3), "truncation_psi": np.array([0.5, 1.0], np.float32),
              "swap_layer": np.array(2, np.int32), "name": np.array([b"x" * 200])}  # a length > 127: 2-byte varint
    ours = sw.prediction_log(sw.predict_request("cartoon", "swap", inputs))
    parsed = prediction_log_pb2.PredictionLog.FromString(ours)
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="cartoon", signature_name="swap"))
    for k, v in inputs.items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    want = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    assert parsed == want
    assert not parsed.predict_log.HasField("response")
    for k, v in inputs.items():
        np.testing.assert_array_equal(tf.make_ndarray(parsed.predict_log.request.inputs[k]), v)


def test_write_is_a_tfrecord_file(tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    requests = [("serving_default", {"z": np.ones([1, 4], np.float32)}), ("png", {"z": np.zeros([1, 4], np.float32)})]
    path = sw.write(str(tmp_path), "m", requests)
    assert path == str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "png"]
    assert tf.make_ndarray(logs[0].predict_log.request.inputs["z"]).tolist() == [[1.0] * 4]
