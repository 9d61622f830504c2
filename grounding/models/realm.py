"""REALM (Guu et al., 2020) for code: a retriever p(z|x) and a knowledge-augmented reader p(y|z,x). No I/O.

The retriever scores a document by the inner product of a query tower and a document tower, each a
BERT-style encoder with mean pooling and a projection head. Both outputs are L2-normalised and the
inner product is multiplied by a learned inverse temperature, so the stored index holds unit
vectors (pgvector's inner-product HNSW then ranks by cosine, like the frozen encoder's index) while
p(z|x) = softmax_z(scale * <q(x), d(z)>) can still be as sharp as training needs.

The reader is a masked LM over [CLS] x [SEP] z [SEP]. Training marginalises over the top-k retrieved
documents plus the null document (empty z, scored by the document tower like any other), so the
loss is -log sum_z p(z|x) p(y|z,x) and a useless retrieval can fall back on the null document.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from grounding.config import DOCUMENT_TOKENS

IGNORE = -100  # label of a position that is not predicted


@dataclass(frozen=True)
class RealmConfig:
    """Hyperparameters of the model and of its training, saved in every checkpoint."""

    encoder: str  # local Hugging Face encoder path the towers and the reader start from
    proj_dim: int | None = None  # projection output; None: the encoder's width, initialised to the identity
    top_k: int = 8  # retrieved documents marginalised over (the null document comes on top)
    max_query_tokens: int = 96
    max_doc_tokens: int = DOCUMENT_TOKENS  # as the frozen encoder's index reads: one setting (config.py)
    init_scale: float = 20.0  # inverse temperature of p(z|x) over cosine scores, learned from here
    share_towers: bool = False  # one encoder for queries and documents (ICT and REALM use two)
    encoder_config: dict = field(default_factory=dict)  # the encoder's HF config, so a checkpoint rebuilds alone

    def to_dict(self) -> dict:
        return asdict(self)


class Tower(nn.Module):
    """An encoder, mean pooling over real tokens, a projection, L2 normalisation: (B, T) ids -> (B, p)."""

    def __init__(self, encoder: nn.Module, hidden: int, proj_dim: int | None) -> None:
        super().__init__()
        self.encoder = encoder
        out = proj_dim or hidden
        self.projection = nn.Linear(hidden, out, bias=False)
        with torch.no_grad():
            if out == hidden:
                # Identity at the start: an untrained tower embeds exactly like the frozen encoder.
                self.projection.weight.copy_(torch.eye(hidden))
            else:
                nn.init.orthogonal_(self.projection.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, h)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, h)
        return F.normalize(self.projection(pooled).float(), dim=-1)  # (B, p)


# --- the pieces of the objective (pure tensor functions) ----------------------------------------


def retrieval_log_probs(query: torch.Tensor, documents: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log p(z|x) over each query's candidate documents: (B, p) and (B, Z, p) -> (B, Z)."""
    assert query.dim() == 2 and documents.dim() == 3 and documents.shape[0] == query.shape[0], (
        f"query {tuple(query.shape)} and documents {tuple(documents.shape)} must be (B, p) and (B, Z, p)"
    )
    scores = torch.einsum("bp,bzp->bz", query, documents) * scale  # (B, Z)
    return F.log_softmax(scores, dim=-1)


def marginal_log_likelihood(retrieval_logp: torch.Tensor, reader_logp: torch.Tensor) -> torch.Tensor:
    """log p(y|x) = log sum_z p(z|x) p(y|z,x), per example: two (B, Z) tensors -> (B,)."""
    assert retrieval_logp.shape == reader_logp.shape, (
        f"retrieval {tuple(retrieval_logp.shape)} and reader {tuple(reader_logp.shape)} log-probs must match"
    )
    return torch.logsumexp(retrieval_logp + reader_logp, dim=-1)


def masked_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(y|z,x): the summed log-probability of every masked target, per sequence: (N, T, V), (N, T) -> (N,)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T)
    return (picked * (labels != IGNORE)).sum(-1)


def retrieval_utility(reader_logp: torch.Tensor) -> torch.Tensor:
    """How much each document helps the reader: log p(y|z,x) - log p(y|null,x); null is column 0. (B, Z)."""
    return reader_logp - reader_logp[:, :1]


# --- the model -----------------------------------------------------------------------------------


class Realm(nn.Module):
    """The retriever's two towers, the inverse temperature and (when pre-training) the reader."""

    def __init__(self, config: RealmConfig, *, query: Tower, document: Tower, reader: nn.Module | None) -> None:
        super().__init__()
        self.config = config
        self.query_tower = query
        self.document_tower = document
        self.reader = reader
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def embed_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.query_tower(input_ids, attention_mask)  # (B, p)

    def embed_documents(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.document_tower(input_ids, attention_mask)  # (N, p)

    def reader_log_likelihood(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """log p(y|z,x) for each [x ; z] sequence: (N, T) inputs -> (N,)."""
        assert self.reader is not None, "this model was built without a reader (retriever-only checkpoint)"
        head = getattr(self.reader, "cls", None)  # BERT's MLM head
        body = getattr(self.reader, self.reader.base_model_prefix, None)
        if head is None or body is None:
            logits = self.reader(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits  # (N, T, V)
            return masked_log_likelihood(logits, labels)
        # Only the masked positions need the vocabulary: full logits for k+1 sequences of 256 tokens
        # over a 30k vocabulary took 19 GB on the CPU with MiniLM.
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]  # (N, T, h)
        masked = labels != IGNORE  # (N, T)
        logp = F.log_softmax(head(hidden[masked]).float(), dim=-1)  # (M, V)
        picked = logp.gather(-1, labels[masked].unsqueeze(-1)).squeeze(-1)  # (M,)
        rows = masked.nonzero()[:, 0]  # (M,) the sequence of each masked token
        return torch.zeros(labels.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)

    def realm_loss(
        self,
        *,
        query_ids: torch.Tensor,  # (B, Tq) the masked x
        query_mask: torch.Tensor,
        doc_ids: torch.Tensor,  # (B, Z, Td) null document first, then the top-k retrieved
        doc_mask: torch.Tensor,
        reader_ids: torch.Tensor,  # (B, Z, Tr) [CLS] x [SEP] z [SEP]
        reader_mask: torch.Tensor,
        reader_types: torch.Tensor,
        labels: torch.Tensor,  # (B, Z, Tr) the masked targets, IGNORE elsewhere
    ) -> dict[str, torch.Tensor]:
        """The REALM objective -mean log sum_z p(z|x) p(y|z,x), and what to log about it."""
        b, z, td = doc_ids.shape
        q = self.embed_queries(query_ids, query_mask)  # (B, p)
        d = self.embed_documents(doc_ids.reshape(b * z, td), doc_mask.reshape(b * z, td)).reshape(b, z, -1)
        retrieval_logp = retrieval_log_probs(q, d, self.scale)  # (B, Z)
        tr = reader_ids.shape[-1]
        reader_logp = self.reader_log_likelihood(
            reader_ids.reshape(b * z, tr),
            reader_mask.reshape(b * z, tr),
            reader_types.reshape(b * z, tr),
            labels.reshape(b * z, tr),
        ).reshape(b, z)  # (B, Z)
        mll = marginal_log_likelihood(retrieval_logp, reader_logp)  # (B,)
        targets = (labels[:, 0] != IGNORE).sum(-1).clamp(min=1)  # (B,) masked tokens per example
        return {
            "loss": -(mll / targets).mean(),
            "null_prob": retrieval_logp[:, 0].exp().mean().detach(),
            "retrieval_entropy": -(retrieval_logp.exp() * retrieval_logp).sum(-1).mean().detach(),
            "utility": retrieval_utility(reader_logp)[:, 1:].max(-1).values.mean().detach(),
        }

    def contrastive_loss(self, queries: torch.Tensor, documents: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each query against a shared pool of documents: (B, p), (N, p), (B,) indices."""
        return F.cross_entropy(queries @ documents.T * self.scale, targets)


def build_realm(config: RealmConfig, *, with_reader: bool, pretrained: bool = True) -> tuple[Realm, RealmConfig]:
    """Towers (and reader) initialised from `config.encoder`, or built from `config.encoder_config` alone."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    if pretrained:
        hf_config = AutoConfig.from_pretrained(config.encoder, local_files_only=True)
        config = RealmConfig(**{**config.to_dict(), "encoder_config": hf_config.to_dict()})

        def encoder() -> nn.Module:
            return _without_pooler(AutoModel.from_pretrained(config.encoder, local_files_only=True))
    else:
        hf_config = AutoConfig.for_model(**config.encoder_config)

        def encoder() -> nn.Module:
            return _without_pooler(AutoModel.from_config(hf_config))

    hidden = int(hf_config.hidden_size)
    query = Tower(encoder(), hidden, config.proj_dim)
    document = query if config.share_towers else Tower(encoder(), hidden, config.proj_dim)
    reader = None
    if with_reader:
        if pretrained:
            # The encoder ships without an MLM head: the head starts fresh, the body from the encoder.
            import transformers

            level = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            try:
                reader = AutoModelForMaskedLM.from_pretrained(config.encoder, local_files_only=True)
            finally:
                transformers.logging.set_verbosity(level)
        else:
            reader = AutoModelForMaskedLM.from_config(hf_config)
    return Realm(config, query=query, document=document, reader=reader), config


def _without_pooler(model: nn.Module) -> nn.Module:
    """Mean pooling replaces BERT's pooler; dropping it keeps unused weights out of the optimiser."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model
