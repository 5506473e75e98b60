"""A few BigQuery REST calls for the demo, against bigquery-emulator (or any endpoint).

Usage:
  bq.py ENDPOINT create-dataset PROJECT DATASET
  bq.py ENDPOINT wait-rows PROJECT DATASET MIN_ROWS TIMEOUT_SECS   (all tables of the dataset)
  bq.py ENDPOINT show PROJECT DATASET                               (tables, counts, sample rows)
"""
import json
import sys
import time
import urllib.error
import urllib.request


def call(endpoint, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(endpoint + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def tables(endpoint, project, dataset):
    _, answer = call(endpoint, "GET", f"/bigquery/v2/projects/{project}/datasets/{dataset}/tables")
    return [t["tableReference"]["tableId"] for t in answer.get("tables", [])]


def count(endpoint, project, dataset, table):
    _, answer = call(endpoint, "GET",
                     f"/_emulator/projects/{project}/datasets/{dataset}/tables/{table}/count")
    return answer.get("rows", 0)


def main():
    endpoint, command, project, dataset, *rest = sys.argv[1:]
    if command == "create-dataset":
        status, answer = call(endpoint, "POST", f"/bigquery/v2/projects/{project}/datasets",
                              {"datasetReference": {"projectId": project, "datasetId": dataset}})
        if status not in (200, 409):
            sys.exit(f"create dataset: {status} {answer}")
    elif command == "wait-rows":
        want, deadline = int(rest[0]), time.time() + float(rest[1])
        while True:
            total = sum(count(endpoint, project, dataset, t) for t in tables(endpoint, project, dataset))
            if total >= want or time.time() > deadline:
                print(f"{total} rows in {project}.{dataset}")
                sys.exit(0 if total >= want else 1)
            time.sleep(0.2)
    elif command == "show":
        for table in sorted(tables(endpoint, project, dataset)):
            base = f"/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}"
            _, resource = call(endpoint, "GET", base)
            names = [f["name"] for f in resource["schema"]["fields"]]
            _, page = call(endpoint, "GET", base + "/data?maxResults=2")
            print(f"{project}.{dataset}.{table}: {count(endpoint, project, dataset, table)} rows")
            for row in page.get("rows", []):
                values = {n: c["v"] for n, c in zip(names, row["f"]) if c["v"] not in (None, [])}
                print("   ", json.dumps(values, ensure_ascii=False))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
