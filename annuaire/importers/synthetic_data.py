"""Word lists the synthetic extract generator draws from (no personal data).

- Given names and surnames: common French first names and the most frequent French
  family names, combined at random: no list of real people is involved, and the
  national ids and addresses the generator pairs them with are synthetic (see
  ``synthetic``).
- Professions: codes and labels of the public nomenclature TRE_G15 (ANS, professions
  of the public health code) with rough weights.
- Savoir-faire: code/label pairs of the public nomenclature TRE_R38 (spécialités
  ordinales, ANS), labels without their "(SM)" suffix, as the RPPS file writes them.
- Cities: real communes with a real postcode and their department code (public
  geography, La Poste / INSEE).
- Street types: AFNOR abbreviations with their label, as the extracts carry them.
"""

from __future__ import annotations

from typing import Final

FEMALE_NAMES: Final = (
    "Marie", "Camille", "Léa", "Manon", "Chloé", "Emma", "Inès", "Sarah", "Julie", "Laura",
    "Anne", "Isabelle", "Nathalie", "Sophie", "Catherine", "Sylvie", "Christine", "Valérie",
    "Céline", "Aurélie", "Émilie", "Hélène", "Claire", "Élodie", "Pauline", "Mathilde",
    "Charlotte", "Lucie", "Juliette", "Agnès", "Françoise", "Martine", "Véronique",
    "Sandrine", "Stéphanie", "Delphine", "Virginie", "Anaïs", "Clémence", "Zoé", "Maëlle",
    "Noémie", "Solène", "Margaux", "Océane", "Bérénice", "Anne-Sophie", "Marie-Claire",
)  # fmt: skip

MALE_NAMES: Final = (
    "Jean", "Pierre", "Michel", "Philippe", "Alain", "Nicolas", "Thomas", "Julien",
    "Sébastien", "Christophe", "Laurent", "Frédéric", "Stéphane", "David", "Olivier", "Éric",
    "François", "Patrick", "Antoine", "Mathieu", "Guillaume", "Romain", "Maxime",
    "Alexandre", "Hugo", "Lucas", "Louis", "Paul", "Arthur", "Théo", "Benoît", "Jérôme",
    "Cédric", "Xavier", "Yves", "Hervé", "Bruno", "Gilles", "Jean-Luc", "Jean-Marc",
    "Jean-Pierre", "Marc", "Vincent", "Baptiste", "Quentin", "Raphaël", "Clément", "Adrien",
    "Loïc", "Yannick", "Gaël", "Erwan",
)  # fmt: skip

SURNAMES: Final = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois",
    "Moreau", "Laurent", "Simon", "Michel", "Lefebvre", "Leroy", "Roux", "David", "Bertrand",
    "Morel", "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau",
    "Vincent", "Muller", "Lefèvre", "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer",
    "Garnier", "Chevalier", "François", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin",
    "Clément", "Morin", "Nicolas", "Henry", "Roussel", "Mathieu", "Gautier", "Masson",
    "Marchand", "Duval", "Denis", "Dumont", "Lemaire", "Noël", "Meyer", "Dufour", "Meunier",
    "Brun", "Blanchard", "Giraud", "Joly", "Rivière", "Lucas", "Brunet", "Gaillard",
    "Barbier", "Arnaud", "Martinez", "Gérard", "Roche", "Renard", "Schmitt", "Roy",
    "Leroux", "Colin", "Vidal", "Caron", "Picard", "Roger", "Fabre", "Aubert", "Lemoine",
    "Renaud", "Dumas", "Lacroix", "Olivier", "Bourgeois", "Rey", "Leclerc", "Payet",
    "Rolland", "Lecomte", "Lopez", "Dupuy", "Guillot", "Hubert", "Berger", "Carpentier",
    "Sanchez", "Dupuis", "Moulin", "Deschamps", "Huet", "Vasseur", "Perez", "Boucher",
    "Fleury", "Royer", "Klein", "Jacquet", "Adam", "Poirier", "Marty", "Aubry", "Guyot",
    "Carré", "Renault", "Charpentier", "Ménard", "Maillard", "Baron", "Bertin", "Bailly",
    "Schneider", "Fernandez", "Le Gall", "Collet", "Léger", "Bouvier", "Prévost", "Millet",
    "Perrot", "Le Roux", "Cousin", "Germain", "Breton", "Besson", "Langlois", "Le Goff",
    "Pelletier", "Lévêque", "Leblanc", "Lebrun", "Weber", "Hamon", "Boulanger", "Monnier",
    "Michaud", "Rodriguez", "Gillet", "Étienne", "Grondin", "Tessier", "Chauvin",
    "Da Silva", "Humbert", "Reynaud", "Hoarau", "Barthélemy", "Cordier", "Lejeune",
    "Delaunay", "Pasquier", "Laporte", "D'Almeida", "Saint-Martin",
)  # fmt: skip

#: (TRE_G15 code, label, weight, MSSanté domain label)
PROFESSIONS: Final = (
    ("10", "Médecin", 45, "medecin"),
    ("60", "Infirmier", 20, "infirmier"),
    ("70", "Masseur-Kinésithérapeute", 10, "masseur-kinesitherapeute"),
    ("21", "Pharmacien", 8, "pharmacien"),
    ("40", "Chirurgien-Dentiste", 6, "chirurgien-dentiste"),
    ("50", "Sage-Femme", 4, "sage-femme"),
    ("91", "Orthophoniste", 3, "orthophoniste"),
    ("80", "Pédicure-Podologue", 2, "pedicure-podologue"),
    ("92", "Orthoptiste", 1, "orthoptiste"),
    ("26", "Audioprothésiste", 1, "audioprothesiste"),
)

#: TRE_R38 savoir-faire of physicians: (code, label, weight)
PHYSICIAN_SPECIALTIES: Final = (
    ("SM54", "Médecine générale", 30),
    ("SM53", "Spécialiste en Médecine générale", 8),
    ("SM26", "Qualifié en Médecine générale", 6),
    ("SM04", "Cardiologie et Maladies vasculaires", 4),
    ("SM02", "Anesthésie-réanimation", 4),
    ("SM42", "Psychiatrie", 4),
    ("SM40", "Pédiatrie", 3),
    ("SM44", "Radio-diagnostic", 3),
    ("SM38", "Ophtalmologie", 3),
    ("SM20", "Gynécologie-obstétrique", 3),
    ("SM15", "Dermatologie et Vénéréologie", 2),
    ("SM24", "Gastro-entérologie et Hépatologie", 2),
    ("SM27", "Médecine interne", 2),
    ("SM32", "Neurologie", 2),
    ("SM41", "Pneumologie", 2),
    ("SM48", "Rhumatologie", 2),
    ("SM03", "Biologie médicale", 2),
    ("SM18", "Gériatrie", 2),
    ("SM34", "ORL et Chirurgie cervico-faciale", 2),
    ("SM08", "Chirurgie orthopédique et Traumatologie", 2),
    ("SM14", "Chirurgie viscérale et digestive", 1),
    ("SM12", "Chirurgie urologique", 1),
    ("SM16", "Endocrinologie et Métabolisme", 1),
    ("SM19", "Gynécologie médicale", 1),
    ("SM21", "Hématologie", 1),
    ("SM28", "Médecine nucléaire", 1),
    ("SM29", "Médecine physique et de réadaptation", 1),
    ("SM30", "Néphrologie", 1),
    ("SM36", "Oncologie, option médicale", 1),
    ("SM43", "Psychiatrie, option enfant et adolescent", 1),
    ("SM49", "Santé publique et Médecine sociale", 1),
    ("SM57", "Allergologie", 1),
    ("SM58", "Maladies infectieuses et tropicales", 1),
    ("SM59", "Médecine d'urgence", 2),
    ("SM61", "Médecine vasculaire", 1),
    ("SM73", "Médecine cardiovasculaire", 1),
    ("SM74", "Radiologie et imagerie médicale", 1),
)

#: TRE_R38 savoir-faire of other professions, by profession code
OTHER_SPECIALTIES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "40": (
        ("SCD01", "Orthopédie dento-faciale"),
        ("SCD02", "Chirurgie orale"),
        ("SCD03", "Médecine bucco-dentaire"),
    ),
    "60": (
        ("SI06", "Infirmier(ère) de bloc opératoire"),
        ("SI07", "Infirmier(ère) anesthésiste"),
    ),
}

#: (city, postcodes, department code)
CITIES: Final = (
    ("Paris", tuple(f"750{n:02d}" for n in range(1, 21)), "75"),
    ("Marseille", tuple(f"130{n:02d}" for n in range(1, 17)), "13"),
    ("Lyon", tuple(f"6900{n}" for n in range(1, 10)), "69"),
    ("Toulouse", ("31000", "31100", "31200", "31300", "31400", "31500"), "31"),
    ("Nice", ("06000", "06100", "06200", "06300"), "06"),
    ("Nantes", ("44000", "44100", "44200", "44300"), "44"),
    ("Montpellier", ("34000", "34070", "34080", "34090"), "34"),
    ("Strasbourg", ("67000", "67100", "67200"), "67"),
    ("Bordeaux", ("33000", "33100", "33200", "33300", "33800"), "33"),
    ("Lille", ("59000", "59800"), "59"),
    ("Rennes", ("35000", "35200", "35700"), "35"),
    ("Reims", ("51100",), "51"),
    ("Toulon", ("83000", "83100", "83200"), "83"),
    ("Saint-Étienne", ("42000", "42100"), "42"),
    ("Le Havre", ("76600", "76610", "76620"), "76"),
    ("Grenoble", ("38000", "38100"), "38"),
    ("Dijon", ("21000",), "21"),
    ("Angers", ("49000", "49100"), "49"),
    ("Nîmes", ("30000", "30900"), "30"),
    ("Villeurbanne", ("69100",), "69"),
    ("Clermont-Ferrand", ("63000", "63100"), "63"),
    ("Le Mans", ("72000", "72100"), "72"),
    ("Aix-en-Provence", ("13100", "13090"), "13"),
    ("Brest", ("29200",), "29"),
    ("Tours", ("37000", "37100", "37200"), "37"),
    ("Amiens", ("80000", "80080", "80090"), "80"),
    ("Limoges", ("87000", "87100", "87280"), "87"),
    ("Annecy", ("74000",), "74"),
    ("Perpignan", ("66000", "66100"), "66"),
    ("Metz", ("57000", "57050", "57070"), "57"),
    ("Besançon", ("25000",), "25"),
    ("Orléans", ("45000", "45100"), "45"),
    ("Rouen", ("76000", "76100"), "76"),
    ("Mulhouse", ("68100", "68200"), "68"),
    ("Caen", ("14000",), "14"),
    ("Nancy", ("54000", "54100"), "54"),
    ("Argenteuil", ("95100",), "95"),
    ("Saint-Denis", ("93200", "93210"), "93"),
    ("Montreuil", ("93100",), "93"),
    ("Roubaix", ("59100",), "59"),
    ("Avignon", ("84000",), "84"),
    ("Poitiers", ("86000",), "86"),
    ("Pau", ("64000",), "64"),
    ("La Rochelle", ("17000",), "17"),
    ("Calais", ("62100",), "62"),
    ("Cannes", ("06400", "06150"), "06"),
    ("Ajaccio", ("20000", "20090"), "2A"),
    ("Bastia", ("20200", "20600"), "2B"),
    ("Fort-de-France", ("97200",), "972"),
    ("Pointe-à-Pitre", ("97110",), "971"),
    ("Saint-Denis", ("97400",), "974"),
    ("Cayenne", ("97300",), "973"),
    ("Mamoudzou", ("97600",), "976"),
    ("Quimper", ("29000",), "29"),
    ("Vannes", ("56000",), "56"),
    ("Lorient", ("56100",), "56"),
    ("Saint-Brieuc", ("22000",), "22"),
    ("Laval", ("53000",), "53"),
    ("Niort", ("79000",), "79"),
    ("Angoulême", ("16000",), "16"),
    ("Périgueux", ("24000",), "24"),
    ("Agen", ("47000",), "47"),
    ("Bayonne", ("64100",), "64"),
    ("Tarbes", ("65000",), "65"),
    ("Montauban", ("82000",), "82"),
    ("Albi", ("81000",), "81"),
    ("Rodez", ("12000",), "12"),
    ("Carcassonne", ("11000",), "11"),
    ("Béziers", ("34500",), "34"),
    ("Valence", ("26000",), "26"),
    ("Chambéry", ("73000",), "73"),
    ("Bourg-en-Bresse", ("01000",), "01"),
    ("Mâcon", ("71000",), "71"),
    ("Nevers", ("58000",), "58"),
    ("Auxerre", ("89000",), "89"),
    ("Troyes", ("10000",), "10"),
    ("Épinal", ("88000",), "88"),
    ("Colmar", ("68000",), "68"),
    ("Belfort", ("90000",), "90"),
    ("Bourges", ("18000",), "18"),
    ("Blois", ("41000",), "41"),
    ("Chartres", ("28000",), "28"),
    ("Évreux", ("27000",), "27"),
    ("Saint-Lô", ("50000",), "50"),
    ("Beauvais", ("60000",), "60"),
    ("Laon", ("02000",), "02"),
    ("Charleville-Mézières", ("08000",), "08"),
    ("Arras", ("62000",), "62"),
    ("Versailles", ("78000",), "78"),
    ("Créteil", ("94000",), "94"),
    ("Nanterre", ("92000",), "92"),
    ("Melun", ("77000",), "77"),
    ("Gap", ("05000",), "05"),
    ("Le Puy-en-Velay", ("43000",), "43"),
    ("Aurillac", ("15000",), "15"),
    ("Moulins", ("03000",), "03"),
    ("Guéret", ("23000",), "23"),
    ("Brive-la-Gaillarde", ("19100",), "19"),
    ("Mende", ("48000",), "48"),
    ("Foix", ("09000",), "09"),
    ("La Roche-sur-Yon", ("85000",), "85"),
    ("Lons-le-Saunier", ("39000",), "39"),
)

#: (AFNOR code, label)
STREET_TYPES: Final = (
    ("R", "Rue"),
    ("R", "Rue"),
    ("R", "Rue"),
    ("AV", "Avenue"),
    ("AV", "Avenue"),
    ("BD", "Boulevard"),
    ("PL", "Place"),
    ("CHE", "Chemin"),
    ("ALL", "Allée"),
    ("IMP", "Impasse"),
    ("QUAI", "Quai"),
    ("RTE", "Route"),
)

STREET_NAMES: Final = (
    "de la République", "Victor Hugo", "Jean Jaurès", "du Général de Gaulle", "Pasteur",
    "de la Gare", "des Écoles", "du Moulin", "de l'Église", "Nationale", "de Paris",
    "Gambetta", "Carnot", "Foch", "de la Liberté", "des Lilas", "du Stade", "Émile Zola",
    "Jules Ferry", "Aristide Briand", "de Verdun", "du 8 Mai 1945", "Léon Blum",
    "des Tilleuls", "du Château", "de la Mairie", "Saint-Martin", "du Port", "des Acacias",
    "Georges Clemenceau", "de la Paix", "des Peupliers", "du Maréchal Leclerc",
)  # fmt: skip

CLINIC_NAMES: Final = (
    "Clinique Saint-Joseph", "Clinique du Parc", "Clinique des Cèdres", "Clinique Pasteur",
    "Clinique Sainte-Anne", "Clinique de l'Espérance", "Polyclinique du Val",
)  # fmt: skip

#: (service label, local part) of organisational boxes
SERVICES: Final = (
    ("Secrétariat de cardiologie", "secretariat.cardiologie"),
    ("Accueil des urgences", "urgences"),
    ("Service de pédiatrie", "pediatrie"),
    ("Bureau des admissions", "admissions"),
    ("Service d'imagerie médicale", "imagerie"),
    ("Laboratoire de biologie médicale", "laboratoire"),
    ("Pharmacie à usage intérieur", "pui"),
    ("Secrétariat médical", "secretariat"),
    ("Service de gériatrie", "geriatrie"),
    ("Maternité", "maternite"),
    ("Service d'oncologie", "oncologie"),
    ("Centre de consultations", "consultations"),
)

#: (label, local part) of application boxes
APPLICATIONS: Final = (
    ("Dossier patient informatisé", "dpi"),
    ("Résultats de laboratoire", "resultats.labo"),
    ("Comptes rendus d'hospitalisation", "crh"),
    ("Lettres de liaison", "lettres.liaison"),
)
