"""Vector search peers for `cargo xtask bench search`: hnswlib and faiss HNSW on the
bench's own vectors, one thread, with the bench's graph parameters.

Reads `data.bin` (u32 n, u32 queries, u32 dim, then n vectors and the queries as
little-endian f32) and `truth.bin` (u32 queries, u32 k, then the exact top-k labels as
u64) and builds both indexes; prints `ready`. Then, for each line `sweep` on its input,
it prints one JSON line per (peer, ef): the p50 of one query at a time through the
binding, the mean per query of one batched call on one thread (no per-call Python
overhead), and recall@k; then `end`. The bench asks for a sweep between its own, so the
two take turns in the same stretch of time. Never a dependency of the product: the
bench runs it in a venv of its own when PyPI is reachable.
"""

import json
import sys
import time

import numpy as np


def load(path):
    with open(path, "rb") as f:
        n, q, dim = np.frombuffer(f.read(12), dtype="<u4")
        data = np.frombuffer(f.read(), dtype="<f4")
    vectors = data[: n * dim].reshape(n, dim)
    queries = data[n * dim : (n + q) * dim].reshape(q, dim)
    return vectors, queries


def load_truth(path):
    with open(path, "rb") as f:
        q, k = np.frombuffer(f.read(8), dtype="<u4")
        return np.frombuffer(f.read(), dtype="<u8").reshape(q, k)


def recall(found, truth):
    hits = sum(len(set(map(int, f)) & set(map(int, t))) for f, t in zip(found, truth))
    return hits / truth.size


def measure(name, ef, one, batch, queries, truth, k):
    # Warm up on the first queries, then one query at a time.
    for q in queries[:20]:
        one(q)
    times, found = [], []
    for q in queries:
        started = time.perf_counter_ns()
        labels = one(q)
        times.append(time.perf_counter_ns() - started)
        found.append(labels)
    started = time.perf_counter_ns()
    batch(queries)
    batch_ns = (time.perf_counter_ns() - started) / len(queries)
    print(
        json.dumps(
            {
                "peer": name,
                "ef": ef,
                "p50_ns": float(np.percentile(times, 50)),
                "batch_mean_ns": batch_ns,
                "recall": recall(found, truth[:, :k]),
            }
        ),
        flush=True,
    )


def main():
    data_path, truth_path, m, ef_construction = sys.argv[1:5]
    efs = [int(e) for e in sys.argv[5].split(",")]
    m, ef_construction = int(m), int(ef_construction)
    vectors, queries = load(data_path)
    truth = load_truth(truth_path)
    k = truth.shape[1]
    # Cosine as inner product of unit vectors, for both.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    unit_queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))

    import faiss
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_construction, random_seed=1)
    index.set_num_threads(2)
    index.add_items(vectors, np.arange(len(vectors)))
    index.set_num_threads(1)

    faiss.omp_set_num_threads(2)
    flat = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    flat.hnsw.efConstruction = ef_construction
    flat.add(np.ascontiguousarray(unit, dtype="float32"))
    faiss.omp_set_num_threads(1)

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "sweep":
            continue
        for ef in efs:
            index.set_ef(max(ef, k))
            measure(
                "hnswlib",
                ef,
                lambda q: index.knn_query(q, k=k)[0][0],
                lambda qs: index.knn_query(qs, k=k),
                queries,
                truth,
                k,
            )
        for ef in efs:
            flat.hnsw.efSearch = max(ef, k)
            measure(
                "faiss_hnsw",
                ef,
                lambda q: flat.search(q.reshape(1, -1), k)[1][0],
                lambda qs: flat.search(qs, k),
                unit_queries,
                truth,
                k,
            )
        print("end", flush=True)


if __name__ == "__main__":
    main()
