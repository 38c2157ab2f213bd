"""Nearest adapters by description embedding, from an index kept beside the catalog.

``index/embeddings-<dim>.npz`` holds, for every adapter with an embedding of that dimension, its id, creation
time, base fingerprint and float32 vector, in catalog order, stamped with the catalog's id and generation (a
counter that every change to the adapters table bumps, by trigger; a rebuilt catalog has a new id). A query
reads the generation and the index in one read transaction; an index of another generation (any add,
overwrite or removal since) or one that does not read back is rebuilt from the catalog and replaced
atomically. Scores are computed exactly as a scan over the
catalog's rows would (float64 cosine, the same tie rule), so the index changes the cost, never the answer.
Loaded with ``allow_pickle=False``: numbers and fixed-width strings only.
"""

from __future__ import annotations

import io
import sqlite3
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptforge.durable import write_file
from adaptforge.library.catalog import Catalog, logger
from adaptforge.library.records import EMBEDDING_DTYPE, AdapterRecord, LibraryError, as_embedding

INDEX_DIR = "index"


@dataclass(frozen=True)
class EmbeddingIndex:
    """The embeddings of one dimension at one catalog generation, in catalog order (created, rowid)."""

    generation: str  # "<catalog id>:<counter>"
    ids: np.ndarray  # str, (n,)
    created: np.ndarray  # float64, (n,)
    bases: np.ndarray  # str, (n,)
    vectors: np.ndarray  # float32, (n, dim)
    other_dims: int  # adapters whose embedding has another dimension (not candidates)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            generation=np.array(self.generation),
            ids=self.ids,
            created=self.created,
            bases=self.bases,
            vectors=self.vectors,
            other_dims=np.int64(self.other_dims),
        )
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path: Path, dim: int) -> EmbeddingIndex:
        """Read and check an index file; ValueError (or an I/O error) when it is not a consistent one."""
        with np.load(path, allow_pickle=False) as data:
            index = cls(
                str(data["generation"]),
                data["ids"],
                data["created"],
                data["bases"],
                data["vectors"],
                int(data["other_dims"]),
            )
        n = len(index.ids)
        if (
            index.vectors.dtype != EMBEDDING_DTYPE
            or index.vectors.shape != (n, dim)
            or index.created.shape != (n,)
            or index.bases.shape != (n,)
            or index.ids.dtype.kind != "U"
            or index.bases.dtype.kind != "U"
        ):
            raise ValueError(f"{path}: arrays of inconsistent shapes or types")
        return index


def _generation(conn: sqlite3.Connection) -> str:
    catalog_id, value = conn.execute("SELECT catalog_id, value FROM generation").fetchone()
    return f"{catalog_id}:{value}"


class Similarity(Catalog):
    """Cosine similarity over description embeddings."""

    def _index_path(self, dim: int) -> Path:
        return self.root / INDEX_DIR / f"embeddings-{dim}.npz"

    def _build_index(self, conn: sqlite3.Connection, dim: int, generation: str) -> EmbeddingIndex:
        rows = conn.execute(
            "SELECT id, embedding, created, base_fingerprint FROM adapters "
            "WHERE embedding IS NOT NULL AND embedding_dim = ? ORDER BY created, rowid",
            (dim,),
        ).fetchall()
        other = conn.execute(
            "SELECT COUNT(*) FROM adapters WHERE embedding IS NOT NULL AND embedding_dim != ?", (dim,)
        ).fetchone()[0]
        blob = b"".join(r[1] for r in rows)
        if len(blob) != len(rows) * dim * EMBEDDING_DTYPE.itemsize:
            raise LibraryError(f"catalog {self.catalog_path}: an embedding's size does not match its recorded dim")
        return EmbeddingIndex(
            generation,
            np.array([r[0] for r in rows], dtype="U16"),
            np.array([float(r[2]) for r in rows], dtype=np.float64),
            np.array([str(r[3]) for r in rows], dtype=str) if rows else np.array([], dtype="U1"),
            np.frombuffer(blob, dtype=EMBEDDING_DTYPE).reshape(len(rows), dim),
            int(other),
        )

    def _embedding_index(self, conn: sqlite3.Connection, dim: int) -> EmbeddingIndex:
        """The index of ``dim`` at the catalog's current generation (``conn`` holds a read transaction)."""
        generation = _generation(conn)
        path = self._index_path(dim)
        try:
            index = EmbeddingIndex.from_file(path, dim)
            if index.generation == generation:
                return index
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.info("similar: rebuilding the unreadable embedding index %s (%s)", path, err)
        index = self._build_index(conn, dim, generation)
        try:
            path.parent.mkdir(exist_ok=True)
            write_file(path, index.to_bytes())
        except OSError as err:  # a read-only library still answers, from the catalog
            logger.info("similar: cannot write the embedding index %s (%s)", path, err)
        return index

    def similar(
        self, embedding: np.ndarray, k: int = 5, base_fingerprint: str | None = None
    ) -> list[tuple[AdapterRecord, float]]:
        """The ``k`` adapters whose description embeddings are closest (cosine) to ``embedding``, best first
        (ties: the older adapter first).

        Adapters without an embedding, or with one of a different dimension, are not candidates.
        """
        if k < 1:
            raise LibraryError(f"similar: k must be at least 1, got {k}")
        query = as_embedding(embedding).astype(np.float64)
        query /= np.linalg.norm(query)
        with self._snapshot() as conn:
            index = self._embedding_index(conn, int(query.size))
            if index.other_dims:
                logger.warning(
                    "similar: %d adapter(s) have embeddings of another dimension than %d", index.other_dims, query.size
                )
            keep: Any = slice(None) if base_fingerprint is None else np.flatnonzero(index.bases == base_fingerprint)
            ids, created = index.ids[keep], index.created[keep]
            if len(ids) == 0:
                return []
            matrix = index.vectors[keep].astype(np.float64)
            scores = matrix @ query / np.linalg.norm(matrix, axis=1)
            # best score first, then the older adapter; scores equal to 12 decimals are ties (the same embedding
            # can score a few ulps apart at two positions of one matrix product)
            top = np.lexsort((created, -np.round(scores, 12)))[:k]
            chosen = [str(ids[i]) for i in top]
            found = {r.id: r for r in self._records(conn, f"WHERE id IN ({', '.join('?' * len(chosen))})", chosen)}
        return [(found[str(ids[i])], float(scores[i])) for i in top]
