"""The service's clinical knowledge, loaded once from data files.

`knowledge.toml` (reviewed by clinicians) names the codes, names and thresholds; `valuesets/`
holds the published value sets it refers to, unchanged. `terminology` normalises every spelling
of a code system, `wording` reads negation and suspicion around a diagnosis, `model` holds the
immutable objects and `loader` builds them at start.
"""

from cds_service.knowledge.loader import KNOWLEDGE_DIR, load_knowledge, load_valueset
from cds_service.knowledge.model import (
    ConceptHit,
    ConceptSet,
    Factor,
    Knowledge,
    KnowledgeError,
    LabCriterion,
    LabDefinition,
    MedicineMatch,
    Substitute,
    fold,
)
from cds_service.knowledge.terminology import CodeKey, CodeSystems
from cds_service.knowledge.wording import CONFIRMED, NEGATED, NOT_A_DIAGNOSIS, PRIOR, SUSPECTED

__all__ = [
    "CONFIRMED", "KNOWLEDGE_DIR", "NEGATED", "NOT_A_DIAGNOSIS", "PRIOR", "SUSPECTED", "CodeKey",
    "CodeSystems", "ConceptHit", "ConceptSet", "Factor", "Knowledge", "KnowledgeError",
    "LabCriterion", "LabDefinition", "MedicineMatch", "Substitute", "fold", "load_knowledge",
    "load_valueset",
]
