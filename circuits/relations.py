"""Built-in factual relations and their identification / test prompt splits.

Each `Relation` holds facts ``(subject, answers)`` (``answers``: accepted spellings, the first is
canonical) and fixed prompt templates with a ``{s}`` slot; a prompt's answer continues it after a
space (``" Paris"``). The facts were chosen for SmolLM2-135M: short, common, mostly single-token
answers. The country relations share subjects, so a neuron that separates one relation from the
others cannot do it by the subject alone.

`split_relation` splits the facts in a fixed seeded order: the first ``n_identification`` facts
give the identification prompts (every template: the set neurons are selected on), the rest give
the test prompts (first template only: the set accuracy is measured on). Facts never cross.

>>> r = RELATIONS["capital_of"]
>>> r.prompt("France")
'The capital of France is'
>>> ident, test = split_relation(r, n_identification=10)
>>> len({p.subject for p in ident} & {p.subject for p in test})
0
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interp.errors import InterpError


@dataclass(frozen=True)
class Relation:
    """A relation: templates with a ``{s}`` slot for the subject, and facts ``(subject, answers)``."""

    name: str
    templates: tuple[str, ...]
    facts: tuple[tuple[str, tuple[str, ...]], ...]

    def prompt(self, subject: str, template: int = 0) -> str:
        return self.templates[template].format(s=subject)


@dataclass(frozen=True)
class RelationPrompt:
    """One prompt of a relation; ``answers``: the accepted completions (without the leading space)."""

    relation: str
    subject: str
    text: str
    answers: tuple[str, ...]


def _facts(pairs: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Parse ``"subject=answer|alt; ..."`` into facts."""
    out = []
    for item in pairs.split(";"):
        subject, answers = item.strip().split("=")
        out.append((subject.strip(), tuple(a.strip() for a in answers.split("|"))))
    return tuple(out)


_COUNTRY_TEMPLATES = {
    "capital_of": ("The capital of Japan is Tokyo. The capital of Egypt is Cairo. The capital of {s} is", "The capital of {s} is", "{s}'s capital city is", "The capital city of {s} is called"),
    "language_of": ("In Japan people speak Japanese. In Russia people speak Russian. In {s} people speak",
                    "The official language of {s} is", "In {s}, most people speak",
                    "The language spoken in {s} is"),
    "continent_of": ("Japan is in Asia. Kenya is in Africa. Peru is in South America. {s} is in",
                     "{s} is a country located in the continent of", "{s} is a country in",
                     "The continent where {s} lies is"),
    "currency_of": ("The currency of Japan is the yen. The currency of Mexico is the peso. The currency of {s} is the",
                    "The currency of {s} is the", "In {s}, people pay with the", "The official currency of {s} is the"),
}

RELATIONS: dict[str, Relation] = {
    "capital_of": Relation("capital_of", _COUNTRY_TEMPLATES["capital_of"], _facts(
        "France=Paris; Germany=Berlin; Italy=Rome; Spain=Madrid; China=Beijing; Russia=Moscow; "
        "India=New Delhi|Delhi; Greece=Athens; Portugal=Lisbon; Turkey=Ankara; Poland=Warsaw; "
        "Sweden=Stockholm; Norway=Oslo; Argentina=Buenos Aires; Kenya=Nairobi; Peru=Lima; Thailand=Bangkok; "
        "Austria=Vienna; Ireland=Dublin; Finland=Helsinki; Denmark=Copenhagen; Hungary=Budapest; Cuba=Havana; "
        "Chile=Santiago; Belgium=Brussels; Iran=Tehran; Canada=Ottawa; Australia=Canberra; England=London")),
    "language_of": Relation("language_of", _COUNTRY_TEMPLATES["language_of"], _facts(
        "France=French; Germany=German; Italy=Italian; Spain=Spanish; China=Chinese|Mandarin; "
        "Egypt=Arabic; Greece=Greek; Portugal=Portuguese; Turkey=Turkish; Poland=Polish; "
        "Sweden=Swedish; Norway=Norwegian; Argentina=Spanish; Peru=Spanish; Thailand=Thai; Austria=German; "
        "Finland=Finnish; Denmark=Danish; Hungary=Hungarian; Cuba=Spanish; Chile=Spanish; Iran=Persian|Farsi; "
        "Brazil=Portuguese; Mexico=Spanish; Netherlands=Dutch; Vietnam=Vietnamese; Korea=Korean; "
        "Indonesia=Indonesian; England=English")),
    "continent_of": Relation("continent_of", _COUNTRY_TEMPLATES["continent_of"], _facts(
        "France=Europe; Germany=Europe; Italy=Europe; Spain=Europe; China=Asia; Egypt=Africa; "
        "India=Asia; Greece=Europe; Portugal=Europe; Poland=Europe; Sweden=Europe; Norway=Europe; "
        "Argentina=South America; Thailand=Asia; Austria=Europe; "
        "Nigeria=Africa; Chile=South America; Iran=Asia; Canada=North America; Brazil=South America; "
        "Mexico=North America; Vietnam=Asia; Korea=Asia; Ethiopia=Africa; Ghana=Africa; Colombia=South America; "
        "Morocco=Africa; Australia=Australia|Oceania")),
    "currency_of": Relation("currency_of", _COUNTRY_TEMPLATES["currency_of"], _facts(
        "France=euro|Euro; Germany=euro|Euro; Italy=euro|Euro; Spain=euro|Euro; "
        "China=yuan|renminbi|Chinese; Russia=ruble|rouble|Russian; India=rupee|Indian; "
        "Turkey=lira|Turkish; Poland=zloty|złoty|Polish; Sweden=krona|Swedish; Norway=krone|Norwegian; "
        "Argentina=peso|Argentine; Thailand=baht|Thai; Vietnam=dong|Vietnamese; Korea=won|Korean; "
        "Denmark=krone|Danish; Hungary=forint|Hungarian; Indonesia=rupiah|Indonesian; Chile=peso|Chilean; "
        "Brazil=real|Brazilian; Egypt=pound|Egyptian; England=pound|British; Canada=dollar|Canadian; "
        "Australia=dollar|Australian; Switzerland=franc|Swiss; Nigeria=naira|Nigerian; Kenya=shilling|Kenyan; "
        "Greece=euro|Euro; Portugal=euro|Euro")),
    "opposite_of": Relation("opposite_of", (
        "The opposite of hot is cold. The opposite of big is small. The opposite of {s} is", "The opposite of {s} is",
        "The antonym of {s} is"), _facts(
        "fast=slow; good=bad|evil; happy=sad|unhappy; light=dark|heavy; rich=poor; "
        "strong=weak; tall=short; open=closed|close; early=late; high=low; wet=dry; full=empty; thick=thin; "
        "loud=quiet|soft; clean=dirty; heavy=light; long=short; cheap=expensive; true=false; alive=dead; "
        "black=white; hard=soft|easy; young=old; old=new|young; love=hate; day=night; up=down; left=right; "
        "inside=outside; win=lose")),
    "plural_of": Relation("plural_of", (
        "One cat, two cats. One child, two children. One {s}, two", "One {s}, two", "The plural of {s} is"), _facts(
        "mouse=mice; man=men; woman=women; foot=feet; tooth=teeth; goose=geese; person=people; "
        "dog=dogs; box=boxes; city=cities; knife=knives; leaf=leaves; wolf=wolves; baby=babies; "
        "book=books; house=houses; car=cars; tree=trees; bird=birds; apple=apples; horse=horses; girl=girls; "
        "boy=boys; day=days; hand=hands; egg=eggs; cow=cows; fish=fish|fishes; sheep=sheep")),
    "past_tense_of": Relation("past_tense_of", (
        "Today I eat, yesterday I ate. Today I go, yesterday I went. Today I {s}, yesterday I",
        "Today I {s}, yesterday I", "The past tense of {s} is"), _facts(
        "run=ran; see=saw; take=took; give=gave; write=wrote; speak=spoke; drink=drank; "
        "swim=swam; sing=sang; begin=began; break=broke; drive=drove; fly=flew; grow=grew; know=knew; "
        "buy=bought; think=thought; teach=taught; catch=caught; bring=brought; sleep=slept; feel=felt; "
        "keep=kept; meet=met; sit=sat; win=won; tell=told; sell=sold; find=found; make=made")),
    "country_of_city": Relation("country_of_city", (
        "Tokyo is a city in Japan. Cairo is a city in Egypt. {s} is a city in", "{s} is a city in",
        "The city of {s} is located in the country of"), _facts(
        "Paris=France; Berlin=Germany; Rome=Italy; Madrid=Spain; Moscow=Russia; Beijing=China; London=England|Britain|the; "
        "Athens=Greece; Lisbon=Portugal; Warsaw=Poland; Stockholm=Sweden; Oslo=Norway; Vienna=Austria; "
        "Dublin=Ireland; Amsterdam=the|Netherlands|Holland; Toronto=Canada; Sydney=Australia; Mumbai=India; "
        "Delhi=India; Istanbul=Turkey; Barcelona=Spain; Munich=Germany; Milan=Italy; Lyon=France; "
        "Shanghai=China; Osaka=Japan; Seoul=Korea|South; Bangkok=Thailand; Nairobi=Kenya; Lima=Peru; "
        "Havana=Cuba; Budapest=Hungary")),
    "female_of": Relation("female_of", (
        "The female of king is queen. The female of father is mother. The female of {s} is",
        "The female form of {s} is", "He is a {s} and she is a"), _facts(
        "man=woman; boy=girl; brother=sister; son=daughter; uncle=aunt; husband=wife; actor=actress; "
        "prince=princess; nephew=niece; grandfather=grandmother; waiter=waitress; god=goddess; lion=lioness; "
        "bull=cow; rooster=hen; host=hostess; emperor=empress; duke=duchess; hero=heroine; gentleman=lady; "
        "groom=bride; monk=nun; wizard=witch; steward=stewardess; stallion=mare; headmaster=headmistress; "
        "landlord=landlady; policeman=policewoman; businessman=businesswoman; boyfriend=girlfriend")),
}


def get_relations(names: list[str] | tuple[str, ...] | None = None) -> list[Relation]:
    """The built-in relations named (None: all of them, in their built-in order)."""
    if names is None:
        return list(RELATIONS.values())
    unknown = [n for n in names if n not in RELATIONS]
    if unknown:
        raise InterpError(f"unknown relation(s) {', '.join(unknown)}: use some of {', '.join(RELATIONS)}")
    if len(set(names)) != len(names):
        raise InterpError("each relation may be named only once")
    return [RELATIONS[n] for n in names]


def split_relation(relation: Relation, n_identification: int = 12, seed: int = 0
                   ) -> tuple[list[RelationPrompt], list[RelationPrompt]]:
    """(identification prompts: every template on the first ``n_identification`` shuffled facts;
    test prompts: the first template on the remaining facts)."""
    if not 0 < n_identification < len(relation.facts):
        raise InterpError(f"n_identification must be in [1, {len(relation.facts) - 1}] for {relation.name} "
                          f"({len(relation.facts)} facts)")
    order = list(range(len(relation.facts)))
    random.Random(f"{seed}:{relation.name}").shuffle(order)
    facts = [relation.facts[i] for i in order]
    ident = [RelationPrompt(relation.name, s, relation.prompt(s, t), a)
             for s, a in facts[:n_identification] for t in range(len(relation.templates))]
    test = [RelationPrompt(relation.name, s, relation.prompt(s, 0), a) for s, a in facts[n_identification:]]
    return ident, test
