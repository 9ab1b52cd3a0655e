"""French departments and regions: the geography the importers fill entries with.

Role: give each imported entry a department code and a region name, so users can search
the annuaire by place (``missive annuaire search --region Bretagne``). The extracts give
a postcode and sometimes a department; this module derives the rest.

Decisions:
- ``Entry.department`` holds the department *code* as INSEE writes it (``"29"``,
  ``"2A"``, ``"971"``): short, unambiguous, what French users type. ``Entry.region``
  holds the region *name* (``"Bretagne"``), the 18 regions in force since 2016.
- A department is derived from a postcode by its first digits (La Poste rule): ``97x``
  and ``98x`` use three digits; Corsica's ``20xxx`` splits into ``2A`` (200xx-201xx)
  and ``2B`` (202xx-206xx). A postcode of ``98x`` (Monaco, Pacific collectivities) or
  ``975``/``977``/``978`` maps to no department: those are not departments.
- Unknown codes give ``None``, never an exception: geography enriches an entry, it
  never makes a row invalid.

The table is public administrative data (INSEE code officiel géographique), typed in
by hand: no library ships it and it changes about once a decade.
"""

from __future__ import annotations

import unicodedata
from typing import Final

_ARA = "Auvergne-Rhône-Alpes"
_BFC = "Bourgogne-Franche-Comté"
_BRE = "Bretagne"
_CVL = "Centre-Val de Loire"
_COR = "Corse"
_GES = "Grand Est"
_HDF = "Hauts-de-France"
_IDF = "Île-de-France"
_NOR = "Normandie"
_NAQ = "Nouvelle-Aquitaine"
_OCC = "Occitanie"
_PDL = "Pays de la Loire"
_PAC = "Provence-Alpes-Côte d'Azur"

#: department code -> (department name, region name)
DEPARTMENTS: Final[dict[str, tuple[str, str]]] = {
    "01": ("Ain", _ARA),
    "02": ("Aisne", _HDF),
    "03": ("Allier", _ARA),
    "04": ("Alpes-de-Haute-Provence", _PAC),
    "05": ("Hautes-Alpes", _PAC),
    "06": ("Alpes-Maritimes", _PAC),
    "07": ("Ardèche", _ARA),
    "08": ("Ardennes", _GES),
    "09": ("Ariège", _OCC),
    "10": ("Aube", _GES),
    "11": ("Aude", _OCC),
    "12": ("Aveyron", _OCC),
    "13": ("Bouches-du-Rhône", _PAC),
    "14": ("Calvados", _NOR),
    "15": ("Cantal", _ARA),
    "16": ("Charente", _NAQ),
    "17": ("Charente-Maritime", _NAQ),
    "18": ("Cher", _CVL),
    "19": ("Corrèze", _NAQ),
    "2A": ("Corse-du-Sud", _COR),
    "2B": ("Haute-Corse", _COR),
    "21": ("Côte-d'Or", _BFC),
    "22": ("Côtes-d'Armor", _BRE),
    "23": ("Creuse", _NAQ),
    "24": ("Dordogne", _NAQ),
    "25": ("Doubs", _BFC),
    "26": ("Drôme", _ARA),
    "27": ("Eure", _NOR),
    "28": ("Eure-et-Loir", _CVL),
    "29": ("Finistère", _BRE),
    "30": ("Gard", _OCC),
    "31": ("Haute-Garonne", _OCC),
    "32": ("Gers", _OCC),
    "33": ("Gironde", _NAQ),
    "34": ("Hérault", _OCC),
    "35": ("Ille-et-Vilaine", _BRE),
    "36": ("Indre", _CVL),
    "37": ("Indre-et-Loire", _CVL),
    "38": ("Isère", _ARA),
    "39": ("Jura", _BFC),
    "40": ("Landes", _NAQ),
    "41": ("Loir-et-Cher", _CVL),
    "42": ("Loire", _ARA),
    "43": ("Haute-Loire", _ARA),
    "44": ("Loire-Atlantique", _PDL),
    "45": ("Loiret", _CVL),
    "46": ("Lot", _OCC),
    "47": ("Lot-et-Garonne", _NAQ),
    "48": ("Lozère", _OCC),
    "49": ("Maine-et-Loire", _PDL),
    "50": ("Manche", _NOR),
    "51": ("Marne", _GES),
    "52": ("Haute-Marne", _GES),
    "53": ("Mayenne", _PDL),
    "54": ("Meurthe-et-Moselle", _GES),
    "55": ("Meuse", _GES),
    "56": ("Morbihan", _BRE),
    "57": ("Moselle", _GES),
    "58": ("Nièvre", _BFC),
    "59": ("Nord", _HDF),
    "60": ("Oise", _HDF),
    "61": ("Orne", _NOR),
    "62": ("Pas-de-Calais", _HDF),
    "63": ("Puy-de-Dôme", _ARA),
    "64": ("Pyrénées-Atlantiques", _NAQ),
    "65": ("Hautes-Pyrénées", _OCC),
    "66": ("Pyrénées-Orientales", _OCC),
    "67": ("Bas-Rhin", _GES),
    "68": ("Haut-Rhin", _GES),
    "69": ("Rhône", _ARA),
    "70": ("Haute-Saône", _BFC),
    "71": ("Saône-et-Loire", _BFC),
    "72": ("Sarthe", _PDL),
    "73": ("Savoie", _ARA),
    "74": ("Haute-Savoie", _ARA),
    "75": ("Paris", _IDF),
    "76": ("Seine-Maritime", _NOR),
    "77": ("Seine-et-Marne", _IDF),
    "78": ("Yvelines", _IDF),
    "79": ("Deux-Sèvres", _NAQ),
    "80": ("Somme", _HDF),
    "81": ("Tarn", _OCC),
    "82": ("Tarn-et-Garonne", _OCC),
    "83": ("Var", _PAC),
    "84": ("Vaucluse", _PAC),
    "85": ("Vendée", _PDL),
    "86": ("Vienne", _NAQ),
    "87": ("Haute-Vienne", _NAQ),
    "88": ("Vosges", _GES),
    "89": ("Yonne", _BFC),
    "90": ("Territoire de Belfort", _BFC),
    "91": ("Essonne", _IDF),
    "92": ("Hauts-de-Seine", _IDF),
    "93": ("Seine-Saint-Denis", _IDF),
    "94": ("Val-de-Marne", _IDF),
    "95": ("Val-d'Oise", _IDF),
    "971": ("Guadeloupe", "Guadeloupe"),
    "972": ("Martinique", "Martinique"),
    "973": ("Guyane", "Guyane"),
    "974": ("La Réunion", "La Réunion"),
    "976": ("Mayotte", "Mayotte"),
}

_CORSICA_SOUTH_PREFIXES: Final = ("200", "201")


def _fold(text: str) -> str:
    """Case- and accent-insensitive form of a name, for matching department names."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    for separator in "-'’":
        stripped = stripped.replace(separator, " ")
    return " ".join(stripped.casefold().split())


_CODE_BY_NAME: Final[dict[str, str]] = {
    _fold(name): code for code, (name, _) in DEPARTMENTS.items()
}


def department_of_postcode(postcode: str | None) -> str | None:
    """The department code of a French postcode (5 digits), or None."""
    if not postcode or len(postcode) != 5 or not postcode.isdigit():
        return None
    if postcode.startswith("20"):
        return "2A" if postcode.startswith(_CORSICA_SOUTH_PREFIXES) else "2B"
    code = postcode[:3] if postcode.startswith("97") else postcode[:2]
    return code if code in DEPARTMENTS else None


def normalise_department(value: str | None) -> str | None:
    """A department code as written in the table (``"1"`` -> ``"01"``, ``"2a"`` ->
    ``"2A"``, ``"029"`` -> ``"29"``, ``"Finistère"`` -> ``"29"``), or None when it is
    no known department."""
    if not value:
        return None
    code = value.strip().upper()
    if code.isdigit():
        if len(code) == 3 and code.startswith("0"):
            code = code[1:]
        elif len(code) == 1:
            code = "0" + code
    if code in DEPARTMENTS:
        return code
    return _CODE_BY_NAME.get(_fold(value))


def region_of(department: str | None) -> str | None:
    """The region name of a department code, or None."""
    if department is None:
        return None
    known = DEPARTMENTS.get(department)
    return known[1] if known else None


def locate(department_field: str | None, postcode: str | None) -> tuple[str | None, str | None]:
    """(department code, region name) from an extract's department column, falling
    back on the postcode when the column is empty or unknown."""
    department = normalise_department(department_field) or department_of_postcode(postcode)
    return department, region_of(department)
