"""The registry knows every name of both seeds, and other libraries can add their own."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import eventhooks
from eventhooks import EventBus, Payload, RegistryError, UnknownEventError, events, registry

# The hooks named by the two seed documents (../shared/seeds), copied from them.
KERAS_SEED = """on_train_begin on_train_end on_epoch_begin on_epoch_end on_test_begin on_test_end
on_predict_begin on_predict_end on_train_batch_begin on_train_batch_end on_test_batch_begin
on_test_batch_end on_predict_batch_begin on_predict_batch_end""".split()
ULTRALYTICS_SEED = """on_pretrain_routine_start on_pretrain_routine_end on_train_start
on_train_epoch_start on_train_batch_start optimizer_step on_before_zero_grad on_train_batch_end
on_train_epoch_end on_fit_epoch_end on_model_save on_train_end on_params_update teardown
on_val_start on_val_batch_start on_val_batch_end on_val_end on_predict_start
on_predict_batch_start on_predict_postprocess_end on_predict_batch_end on_predict_end
on_export_start on_export_end""".split()

# PRODUCT.md §1: the Keras twin of each Ultralytics moment.
TWINS = {
    "on_train_begin": "on_train_start",
    "on_epoch_begin": "on_train_epoch_start",
    "on_train_batch_begin": "on_train_batch_start",
    "on_train_batch_end": "on_train_batch_end",
    "on_test_begin": "on_val_start",
    "on_test_batch_begin": "on_val_batch_start",
    "on_test_batch_end": "on_val_batch_end",
    "on_test_end": "on_val_end",
    "on_epoch_end": "on_fit_epoch_end",
    "on_train_end": "on_train_end",
    "on_predict_begin": "on_predict_start",
    "on_predict_batch_begin": "on_predict_batch_start",
    "on_predict_batch_end": "on_predict_batch_end",
    "on_predict_end": "on_predict_end",
}


def test_seed_counts() -> None:
    assert len(KERAS_SEED) == 14 and len(ULTRALYTICS_SEED) == 25
    assert len(set(KERAS_SEED) | set(ULTRALYTICS_SEED)) == 35


def test_every_seed_name_resolves_to_one_of_25_events() -> None:
    names = set(KERAS_SEED) | set(ULTRALYTICS_SEED)
    builtin = {n for n in registry.names() if "." not in n}  # custom names carry a prefix
    assert builtin == names
    resolved = {registry.resolve(n) for n in names}
    assert len(resolved) == 25
    for name in ULTRALYTICS_SEED:
        assert registry.resolve(name).name == name


@pytest.mark.parametrize("keras_name", sorted(TWINS))
def test_keras_name_is_its_ultralytics_twin(keras_name: str) -> None:
    event = registry.resolve(keras_name)
    assert event is registry.resolve(TWINS[keras_name])
    assert event.keras == keras_name
    assert getattr(events, keras_name) is event


def test_payload_fields_by_kind() -> None:
    for event in registry.events():
        fields = event.payload.model_fields
        if event.counter == "epoch":
            assert fields["epoch"].is_required()
        if event.counter == "batch":
            assert fields["batch"].is_required()
        # The run's facts are not fields validated per emit; rank/world_size still dump.
        assert not {"source", "params", "rank", "world_size"} & set(fields)
        assert {"rank", "world_size"} <= set(event.payload.model_computed_fields)
    assert registry.resolve("on_model_save").payload.model_fields["path"].is_required()
    assert "error" in registry.resolve("teardown").payload.model_fields
    assert "outputs" in registry.resolve("on_predict_batch_end").payload.model_fields
    assert {"format", "path"} <= set(registry.resolve("on_export_end").payload.model_fields)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(UnknownEventError) as info:
        registry.resolve("on_train_epoch_stat")
    assert "on_train_epoch_start" in str(info.value)
    assert info.value.suggestions[0] == "on_train_epoch_start"


class SamplePayload(Payload):
    step: int
    text: str = ""


def test_custom_event_with_prefix() -> None:
    reg = registry.Registry()
    event = reg.register("mylib.on_sample", SamplePayload, aliases=("mylib.sample",), doc="x")
    assert reg.resolve("mylib.sample") is event
    assert "mylib.on_sample" in reg.names() and "mylib.on_sample" not in registry.names()
    bus = EventBus(registry=reg)
    seen: list[int] = []
    bus.on("mylib.sample")(lambda p: seen.append(p.step))
    bus.emit("mylib.on_sample", step=3)
    assert seen == [3]
    assert reg.schema("mylib.on_sample")["properties"]["step"]["type"] == "integer"


def test_custom_event_registered_after_bus_creation() -> None:
    reg = registry.Registry()
    bus = EventBus(registry=reg)
    reg.register("late.on_thing", SamplePayload)
    got = bus.emit("late.on_thing", step=1)
    assert got is None  # nobody listens yet
    bus.subscribe("late.on_thing", lambda p: None)
    assert bus.emit("late.on_thing", step=1).step == 1


@pytest.mark.parametrize("name", ["on_epoch_end", "teardown", "on_sample", "my lib.x", "mylib."])
def test_clash_or_missing_prefix_is_an_error(name: str) -> None:
    reg = registry.Registry()
    with pytest.raises(RegistryError) as info:
        reg.register(name, SamplePayload)
    assert name in str(info.value)


def test_clash_between_custom_events() -> None:
    reg = registry.Registry()
    reg.register("mylib.on_a", SamplePayload)
    with pytest.raises(RegistryError, match="already taken"):
        reg.register("other.on_b", SamplePayload, aliases=("mylib.on_a",))
    with pytest.raises(RegistryError, match=r"subclass of eventhooks\.Payload"):
        reg.register("mylib.on_c", dict)  # type: ignore[type-var]

    class Plain(BaseModel):  # no rank, source...: filters and EventLog need those
        step: int

    with pytest.raises(RegistryError, match=r"subclass of eventhooks\.Payload"):
        reg.register("mylib.on_d", Plain)  # type: ignore[type-var]


def test_every_payload_exports_json_schema() -> None:
    schemas = registry.schema()
    assert set(schemas) == {e.name for e in registry.events()}
    for name, schema in schemas.items():
        assert schema["title"] == name and schema["type"] == "object"
        assert "source" not in schema["properties"]  # framework objects stay out


def test_public_surface() -> None:
    for name in eventhooks.__all__:
        assert hasattr(eventhooks, name), name
    assert issubclass(eventhooks.RunPayload, BaseModel)


def test_repeated_names_and_a_counter_without_its_field_are_refused() -> None:
    reg = registry.Registry()
    with pytest.raises(RegistryError, match="repeat"):
        reg.register("mylib.z", SamplePayload, aliases=("mylib.z",))
    with pytest.raises(RegistryError, match="counter='epoch'"):
        reg.register("mylib.w", SamplePayload, counter="epoch")
    assert "mylib.z" not in reg and "mylib.w" not in reg
