"""nlcore modules built from the ops (DESIGN §1): the Continuum Memory System so far."""
from .cms import CMS, CMSLevel

__all__ = ["CMS", "CMSLevel"]
