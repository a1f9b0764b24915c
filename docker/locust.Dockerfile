# The image of docker-compose.yml's Locust master and workers: firehose installed from this checkout.
# Editable, because firehose finds schema/ and locustfile.py next to its packages.
FROM python:3.11-slim
WORKDIR /firehose
COPY . .
RUN pip install --no-cache-dir -e .
