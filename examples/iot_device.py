# iot_device.py -- the device script of the IoT pipeline design ("How to Set Up an OpenTelemetry + NATS +
# TimescaleDB Pipeline for IoT Telemetry at Scale"), kept verbatim so that jetscale is tested
# against exactly what the article tells devices to send. Changes from the IoT design, and only these:
#   1. read_temperature_sensor / read_humidity_sensor / read_battery_level are defined (the IoT design
#      leaves them to the hardware): believable random walks, temperature 18-28 degC, humidity
#      30-70 %, battery starting at 60-100 % and draining slightly per reading.
#   2. the `while True` loop stops after env COUNT messages (unset or 0: forever, as the IoT design),
#      and the sleep between messages is env INTERVAL seconds (default 10, as the IoT design).
# Everything else (imports, env, payload, subject, js.publish, which awaits the stream's ack) is
# the IoT design's text.
# Requires the nats-py client: pip install nats-py
# Example: NATS_URL=nats://127.0.0.1:4222 DEVICE_ID=sensor-001 COUNT=5 INTERVAL=0.1 python3 iot_device.py
import nats
import json
import asyncio
import time
import os

DEVICE_ID = os.getenv("DEVICE_ID", "sensor-001")
NATS_URL = os.getenv("NATS_URL", "nats://device:password@nats:4222")

# --- added (change 2): loop bound and pace ---
COUNT = int(os.getenv("COUNT", "0"))  # 0 = forever
INTERVAL = float(os.getenv("INTERVAL", "10"))

# --- added (change 1): the sensor readings the article leaves undefined ---
import random

_rng = random.Random()
_state = {
    "temperature": _rng.uniform(20.0, 26.0),
    "humidity": _rng.uniform(38.0, 62.0),
    "battery": _rng.uniform(60.0, 100.0),
}


def _walk(key, step, lo, hi):
    value = _state[key] + _rng.gauss(0.0, step)
    if value < lo:
        value = 2 * lo - value
    if value > hi:
        value = 2 * hi - value
    _state[key] = min(max(value, lo), hi)
    return _state[key]


def read_temperature_sensor():
    return _walk("temperature", 0.15, 18.0, 28.0)


def read_humidity_sensor():
    return _walk("humidity", 0.5, 30.0, 70.0)


def read_battery_level():
    _state["battery"] = min(max(_state["battery"] - _rng.uniform(0.001, 0.02), 0.0), 100.0)
    return _state["battery"]
# --- end of added code ---

async def publish_telemetry():
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    sent = 0  # added (change 2)

    while True:
        # Read sensor data
        temperature = read_temperature_sensor()
        humidity = read_humidity_sensor()
        battery_level = read_battery_level()

        # Format as OTLP-compatible metric
        payload = {
            "resourceMetrics": [{
                "resource": {
                    "attributes": [
                        {"key": "service.name",
                         "value": {"stringValue": "iot-sensor"}},
                        {"key": "device.id",
                         "value": {"stringValue": DEVICE_ID}},
                        {"key": "device.location",
                         "value": {"stringValue": "warehouse-a"}}
                    ]
                },
                "scopeMetrics": [{
                    "metrics": [
                        {
                            "name": "device.temperature",
                            "unit": "Cel",
                            "gauge": {
                                "dataPoints": [{
                                    "timeUnixNano": str(time.time_ns()),
                                    "asDouble": temperature
                                }]
                            }
                        },
                        {
                            "name": "device.humidity",
                            "unit": "%",
                            "gauge": {
                                "dataPoints": [{
                                    "timeUnixNano": str(time.time_ns()),
                                    "asDouble": humidity
                                }]
                            }
                        },
                        {
                            "name": "device.battery",
                            "unit": "%",
                            "gauge": {
                                "dataPoints": [{
                                    "timeUnixNano": str(time.time_ns()),
                                    "asDouble": battery_level
                                }]
                            }
                        }
                    ]
                }]
            }]
        }

        # Publish to NATS subject based on device location
        subject = f"telemetry.metrics.{DEVICE_ID}"
        await js.publish(subject, json.dumps(payload).encode())

        # added (change 2): stop after COUNT messages
        sent += 1
        if COUNT and sent >= COUNT:
            break

        # Send every 10 seconds
        await asyncio.sleep(INTERVAL)

asyncio.run(publish_telemetry())
